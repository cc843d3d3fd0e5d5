// Command pkiverify is the Go crypto/x509 judge of the kubepki.certs interop tests.
//
//	pkiverify verify --roots F [--intermediates F] [--usage server|client|any] [--dns NAME] CERT
//	pkiverify hashca FILE
//
// Standard library only; written independently of the collection's Python code.
package main

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	switch os.Args[1] {
	case "verify":
		os.Exit(verify(os.Args[2:]))
	case "hashca":
		os.Exit(hashCACommand(os.Args[2:]))
	default:
		usage()
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: pkiverify verify --roots F [--intermediates F] [--usage server|client|any] [--dns NAME] CERT")
	fmt.Fprintln(os.Stderr, "       pkiverify hashca FILE")
	os.Exit(2)
}

// parseCerts returns every CERTIFICATE block of data, in order.
func parseCerts(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		certs = append(certs, cert)
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM certificate found")
	}
	return certs, nil
}

func readCerts(path string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	certs, err := parseCerts(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	return certs, nil
}

// addCerts adds every certificate of the PEM file at path to pool.
func addCerts(pool *x509.CertPool, path string) error {
	certs, err := readCerts(path)
	if err != nil {
		return err
	}
	for _, c := range certs {
		pool.AddCert(c)
	}
	return nil
}

func verify(args []string) int {
	fs := flag.NewFlagSet("verify", flag.ExitOnError)
	rootsFile := fs.String("roots", "", "PEM file of trusted roots")
	intermediatesFile := fs.String("intermediates", "", "PEM file of untrusted intermediates")
	usageName := fs.String("usage", "server", "server, client or any")
	dnsName := fs.String("dns", "", "name (DNS or IP) the certificate must be valid for")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *rootsFile == "" || fs.NArg() != 1 {
		usage()
	}
	leafCerts, err := readCerts(fs.Arg(0))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	opts := x509.VerifyOptions{Roots: x509.NewCertPool(), Intermediates: x509.NewCertPool(), DNSName: *dnsName}
	if err := addCerts(opts.Roots, *rootsFile); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if *intermediatesFile != "" {
		if err := addCerts(opts.Intermediates, *intermediatesFile); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	// Further certificates in the CERT file are sent along as a peer would send its chain.
	for _, c := range leafCerts[1:] {
		opts.Intermediates.AddCert(c)
	}
	switch *usageName {
	case "server":
		opts.KeyUsages = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	case "client":
		opts.KeyUsages = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	case "any":
		opts.KeyUsages = []x509.ExtKeyUsage{x509.ExtKeyUsageAny}
	default:
		fmt.Fprintf(os.Stderr, "unknown usage %q\n", *usageName)
		return 2
	}
	chains, err := leafCerts[0].Verify(opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	for i, chain := range chains {
		fmt.Printf("chain %d:\n", i)
		for _, c := range chain {
			fmt.Printf("  %s\n", c.Subject.String())
		}
	}
	return 0
}

// isRoot is k3s's test: no AKI, or AKI equal to the SKI.
func isRoot(c *x509.Certificate) bool {
	return len(c.AuthorityKeyId) == 0 || string(c.AuthorityKeyId) == string(c.SubjectKeyId)
}

// hashCA is k3s's join-token CA hash (k3s-rke2-pki.md section 6.2).
func hashCA(data []byte) (string, error) {
	certs, err := parseCerts(data)
	if err != nil {
		return "", err
	}
	if len(certs) == 1 {
		sum := sha256.Sum256(data)
		return hex.EncodeToString(sum[:]), nil
	}
	opts := x509.VerifyOptions{Roots: x509.NewCertPool(), Intermediates: x509.NewCertPool()}
	for _, c := range certs[1:] {
		if isRoot(c) {
			opts.Roots.AddCert(c)
		} else {
			opts.Intermediates.AddCert(c)
		}
	}
	chains, err := certs[0].Verify(opts)
	if err != nil {
		fmt.Fprintf(os.Stderr, "hashca: bundle does not verify (%v); hashing the raw bytes\n", err)
		sum := sha256.Sum256(data)
		return hex.EncodeToString(sum[:]), nil
	}
	last := chains[0][len(chains[0])-1]
	sum := sha256.Sum256(last.Raw)
	return hex.EncodeToString(sum[:]), nil
}

func hashCACommand(args []string) int {
	if len(args) != 1 {
		usage()
	}
	data, err := os.ReadFile(args[0])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	hash, err := hashCA(data)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println(hash)
	return 0
}
