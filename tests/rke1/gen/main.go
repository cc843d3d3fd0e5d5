// Command rke1-fixtures writes RKE1 test fixtures with rke's own Go code (github.com/rancher/rke, the version
// pinned in go.mod): the cluster.rkestate next to a cluster.yml, exactly as `rke up` / `rke cert rotate` write
// it, and the certificate files each node would hold under /etc/kubernetes/ssl.
//
// Usage:
//
//	rke1-fixtures up           -config DIR/cluster.yml -nodes NODES_DIR
//	rke1-fixtures rotate       -config DIR/cluster.yml -nodes NODES_DIR [-rotate-ca] [-service NAME]... [-no-deploy]
//	rke1-fixtures csr          -config DIR/cluster.yml [-cert-dir CERT_DIR]
//	rke1-fixtures check-custom -config DIR/cluster.yml [-cert-dir CERT_DIR]
//
// "csr" is `rke cert generate-csr` (cmd.GenerateRKECSRs): <name>-csr.pem and <name>-key.pem of every component and
// etcd node in CERT_DIR (default: rke's, <cluster file without extension>_certs next to it); a rerun keeps the keys
// and CSRs already there. "check-custom" reads CERT_DIR as `rke up --custom-certs --cert-dir CERT_DIR` does
// (cluster.RebuildState with CustomCerts: pki.ReadCertsAndKeysFromDir, pki.ValidateBundleContent, which ends with
// validateCAIssuer) and exits 1 with rke's error when rke would refuse the directory; see csr.go.
//
// "rotate" runs rke's cmd.ClusterInit as `rke cert rotate` does (the rotation of the current state into the desired
// state), "up" the same steps for a fresh cluster (initFreshCluster); both then run the certificate part of a successful `rke up`: SetUpAuthentication, deployment of each node's
// files, UpdateClusterCurrentState (current state = desired state). Nothing is contacted: no SSH, no Docker.
// -no-deploy stops after ClusterInit: the state of a rotation interrupted before it reached the nodes (new
// certificates in desiredState only).
//
// Node files: rke hands each node its certificates (pki.GenerateRKENodeCerts; the CA key stripped on
// non-control-plane nodes, as pki.DeployCertificatesOnPlaneHost does) as environment variables
// (CertificatePKI.ToEnv) to the cert-deployer container of rke-tools, a shell script outside rke's Go module.
// That script writes each KUBE_* variable to <lower-case name, '_' -> '-'>.pem and each KUBECFG_* variable to
// <...>.yaml in /etc/kubernetes/ssl, with the shell's echo (one trailing newline); writeNodeFiles does the same
// under NODES_DIR/<address>/etc/kubernetes/ssl.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/rancher/rke/cluster"
	"github.com/rancher/rke/cmd"
	"github.com/rancher/rke/hosts"
	"github.com/rancher/rke/pki"
	v3 "github.com/rancher/rke/types"
)

type serviceList []string

func (s *serviceList) String() string     { return strings.Join(*s, ",") }
func (s *serviceList) Set(v string) error { *s = append(*s, v); return nil }

func main() {
	if len(os.Args) >= 2 && (os.Args[1] == "csr" || os.Args[1] == "check-custom") {
		os.Exit(certDirMain(os.Args[1], os.Args[2:]))
	}
	if len(os.Args) < 2 || (os.Args[1] != "up" && os.Args[1] != "rotate") {
		fmt.Fprintln(os.Stderr, "usage: rke1-fixtures up|rotate -config cluster.yml -nodes DIR [-rotate-ca] [-service NAME]...\n"+
			"       rke1-fixtures csr|check-custom -config cluster.yml [-cert-dir DIR]")
		os.Exit(2)
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	config := fs.String("config", "cluster.yml", "cluster.yml; cluster.rkestate is written next to it")
	nodesDir := fs.String("nodes", "", "directory receiving <address>/etc/kubernetes/ssl/* per node")
	rotateCA := fs.Bool("rotate-ca", false, "rotate: also regenerate kube-ca and the request-header CA")
	noDeploy := fs.Bool("no-deploy", false, "stop after writing the desired state (no node files, currentState kept)")
	var services serviceList
	fs.Var(&services, "service", "rotate: only this service's certificates (repeatable)")
	if err := fs.Parse(os.Args[2:]); err != nil {
		os.Exit(2)
	}
	if *nodesDir == "" {
		fmt.Fprintln(os.Stderr, "rke1-fixtures: -nodes is required")
		os.Exit(2)
	}
	if err := run(os.Args[1] == "rotate", *config, *nodesDir, *rotateCA, services, !*noDeploy); err != nil {
		fmt.Fprintf(os.Stderr, "rke1-fixtures: %v\n", err)
		os.Exit(1)
	}
}

func run(rotate bool, clusterFile, nodesDir string, rotateCA bool, services []string, deployToNodes bool) error {
	ctx := context.Background()
	clusterFile, err := filepath.Abs(clusterFile)
	if err != nil {
		return err
	}
	content, err := os.ReadFile(clusterFile)
	if err != nil {
		return err
	}
	rkeConfig, err := cluster.ParseConfig(string(content))
	if err != nil {
		return fmt.Errorf("parse %s: %w", clusterFile, err)
	}
	flags := cluster.GetExternalFlags(false, false, false, false, "", clusterFile)
	statePath := cluster.GetStateFilePath(flags.ClusterFilePath, flags.ConfigDir)
	if rotate {
		rkeConfig.RotateCertificates = &v3.RotateCertificates{CACertificates: rotateCA, Services: services}
		if err := cmd.ClusterInit(ctx, rkeConfig, hosts.DialersOptions{}, flags); err != nil {
			return err
		}
	} else if err := initFreshCluster(ctx, rkeConfig, flags, statePath); err != nil {
		return err
	}
	if !deployToNodes {
		return nil
	}
	return deploy(ctx, flags, statePath, nodesDir)
}

// initFreshCluster is cmd.ClusterInit for a new cluster without its legacy-cluster check: with no state file
// and no kube_config_cluster.yml that check recovers a pre-0.2 cluster's state over SSH (TunnelHosts). The steps
// kept are ClusterInit's own: read the (absent) state, InitClusterObject, RebuildState, WriteStateFile.
func initFreshCluster(ctx context.Context, rkeConfig *v3.RancherKubernetesEngineConfig, flags cluster.ExternalFlags, statePath string) error {
	if err := os.Remove(statePath); err != nil && !os.IsNotExist(err) {
		return err
	}
	oldState, _ := cluster.ReadStateFile(ctx, statePath) // absent: the empty state of a fresh cluster
	kubeCluster, err := cluster.InitClusterObject(ctx, rkeConfig, flags, oldState.DesiredState.EncryptionConfig)
	if err != nil {
		return err
	}
	fullState, err := cluster.RebuildState(ctx, kubeCluster, oldState, flags)
	if err != nil {
		return err
	}
	state := cluster.FullState{DesiredState: fullState.DesiredState, CurrentState: fullState.CurrentState}
	return state.WriteStateFile(ctx, statePath)
}

// deploy is the certificate part of cmd.ClusterUp after ClusterInit.
func deploy(ctx context.Context, flags cluster.ExternalFlags, statePath, nodesDir string) error {
	state, err := cluster.ReadStateFile(ctx, statePath)
	if err != nil {
		return err
	}
	kubeCluster, err := cluster.InitClusterObject(ctx, state.DesiredState.RancherKubernetesEngineConfig.DeepCopy(), flags, state.DesiredState.EncryptionConfig)
	if err != nil {
		return err
	}
	currentCluster, err := kubeCluster.GetClusterState(ctx, state)
	if err != nil {
		return err
	}
	if err := cluster.SetUpAuthentication(ctx, kubeCluster, currentCluster, state); err != nil {
		return err
	}
	// ReadStateFile parsed the PEM strings into the objects ToEnv encodes.
	certs := pki.TransformPEMToObject(kubeCluster.Certificates)
	for _, node := range kubeCluster.RancherKubernetesEngineConfig.Nodes {
		if err := writeNodeFiles(ctx, kubeCluster.RancherKubernetesEngineConfig, node, certs, nodesDir); err != nil {
			return err
		}
	}
	return kubeCluster.UpdateClusterCurrentState(ctx, state)
}

func isControlPlane(node v3.RKEConfigNode) bool {
	for _, role := range node.Role {
		if role == "controlplane" {
			return true
		}
	}
	return false
}

func writeNodeFiles(ctx context.Context, rkeConfig v3.RancherKubernetesEngineConfig, node v3.RKEConfigNode, certs map[string]pki.CertificatePKI, nodesDir string) error {
	bundle := pki.GenerateRKENodeCerts(ctx, rkeConfig, node.Address, certs)
	if !isControlPlane(node) {
		ca := bundle[pki.CACertName]
		ca.Key = nil
		ca.KeyEnvName = ""
		ca.KeyPath = ""
		bundle[pki.CACertName] = ca
	}
	sslDir := filepath.Join(nodesDir, node.Address, "etc", "kubernetes", "ssl")
	if err := os.MkdirAll(sslDir, 0o755); err != nil {
		return err
	}
	names := make([]string, 0, len(bundle))
	for name := range bundle {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		crt := bundle[name]
		for _, variable := range crt.ToEnv() {
			key, value, _ := strings.Cut(variable, "=")
			if err := os.WriteFile(filepath.Join(sslDir, deployerFileName(key)), []byte(strings.TrimRight(value, "\n")+"\n"), 0o600); err != nil {
				return err
			}
		}
	}
	return nil
}

// deployerFileName is cert-deployer's name for a variable: KUBE_APISERVER_KEY -> kube-apiserver-key.pem,
// KUBECFG_KUBE_NODE -> kubecfg-kube-node.yaml.
func deployerFileName(variable string) string {
	base := strings.ReplaceAll(strings.ToLower(variable), "_", "-")
	if strings.HasPrefix(variable, "KUBECFG_") {
		return base + ".yaml"
	}
	return base + ".pem"
}
