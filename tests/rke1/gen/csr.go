package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/rancher/rke/cluster"
	"github.com/rancher/rke/cmd"
)

// certDirMain runs "csr" or "check-custom"; it returns the exit code (1 with rke's error on stderr).
func certDirMain(command string, args []string) int {
	fs := flag.NewFlagSet(command, flag.ExitOnError)
	config := fs.String("config", "cluster.yml", "the cluster.yml")
	certDir := fs.String("cert-dir", "", "the certificate directory (default: rke's, <cluster file stem>_certs)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	var err error
	if command == "csr" {
		err = generateCSRs(*config, *certDir)
	} else {
		err = checkCustomCerts(*config, *certDir)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "rke1-fixtures: %v\n", err)
		return 1
	}
	return 0
}

// parseClusterFile is what `rke cert generate-csr` and `rke up` do with --config before anything else
// (cmd.resolveClusterFile, cluster.ParseConfig, cluster.GetExternalFlags); the flags keep the path as given, as
// rke does, so rke's default certificate directory is relative to it.
func parseClusterFile(clusterFile, certDir string) (*cluster.ExternalFlags, []byte, error) {
	content, err := os.ReadFile(clusterFile)
	if err != nil {
		return nil, nil, fmt.Errorf("Failed to resolve cluster file: can not find cluster configuration file: %v", err)
	}
	flags := cluster.GetExternalFlags(false, false, false, false, "", clusterFile)
	flags.CertificateDir = certDir
	return &flags, content, nil
}

// generateCSRs is cmd.generateCSRFromCli without the CLI: cmd.GenerateRKECSRs, rke's own writer of the CSRs and keys.
func generateCSRs(clusterFile, certDir string) error {
	flags, content, err := parseClusterFile(clusterFile, certDir)
	if err != nil {
		return err
	}
	rkeConfig, err := cluster.ParseConfig(string(content))
	if err != nil {
		return fmt.Errorf("Failed to parse cluster file: %v", err)
	}
	return cmd.GenerateRKECSRs(context.Background(), rkeConfig, *flags)
}

// checkCustomCerts is the part of `rke up --custom-certs --cert-dir DIR` that reads DIR (cmd.ClusterInit ->
// cluster.InitClusterObject -> cluster.RebuildState with flags.CustomCerts; a fresh cluster, no state file read):
// RebuildState reads the directory (pki.ReadCertsAndKeysFromDir) and validates the bundle (pki.ValidateBundleContent:
// kube-ca, every component's certificate and key, each etcd host's, then validateCAIssuer). Nothing is contacted.
func checkCustomCerts(clusterFile, certDir string) error {
	flags, content, err := parseClusterFile(clusterFile, certDir)
	if err != nil {
		return err
	}
	flags.CustomCerts = true
	if len(flags.CertificateDir) == 0 {
		flags.CertificateDir = cluster.GetCertificateDirPath(flags.ClusterFilePath, flags.ConfigDir)
	}
	if _, err := os.Stat(flags.CertificateDir); err != nil {
		// rke reads an absent directory as an empty bundle and then misses kube-ca; say which directory.
		return fmt.Errorf("[state] Failed to read certificates from dir [%s]: %v", filepath.Clean(flags.CertificateDir), err)
	}
	rkeConfig, err := cluster.ParseConfig(string(content))
	if err != nil {
		return fmt.Errorf("Failed to parse cluster file: %v", err)
	}
	ctx := context.Background()
	kubeCluster, err := cluster.InitClusterObject(ctx, rkeConfig, *flags, "")
	if err != nil {
		return err
	}
	state, err := cluster.RebuildState(ctx, kubeCluster, &cluster.FullState{}, *flags)
	if err != nil {
		return err
	}
	fmt.Printf("custom certificates accepted: %d from %s\n", len(state.DesiredState.CertificatesBundle), flags.CertificateDir)
	return nil
}
