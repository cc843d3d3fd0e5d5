// Command labclient is the Go TLS client of the lab traffic probe (tests/lab/probe.py): one HTTPS GET per run,
// the server certificate verified by crypto/tls and crypto/x509 exactly as kubectl (client-go) verifies it
// (any certificate of the CA file anchors; Go builds every candidate path through what the server sent),
// the client certificate presented as kubectl presents a kubeconfig's. It prints one JSON line saying where
// the request ended, so that the probe can tell a server that is down from a certificate that is refused.
//
//	labclient get --ca FILE [--cert FILE --key FILE] [--server-name NAME] [--user-agent UA]
//	              [--timeout 2s] [--dial-timeout 1s] https://HOST:PORT/PATH
//
// Stages of a failure: dial (TCP connect), certificate (this client refused the server's certificate),
// tls-alert (the server refused the handshake or this client's certificate with a TLS alert), handshake-closed
// (the peer closed the connection during the handshake without an alert: a server closing its listener),
// handshake (other handshake errors, e.g. a timeout), request (after the handshake: write, read, timeout),
// status (an HTTP answer other than 200). Exit code 0 (HTTP 200), 1 (failed), 2 (bad arguments or files).
//
// Standard library only; written for the lab, sharing no code with the collection.
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"syscall"
	"time"
)

type result struct {
	OK     bool   `json:"ok"`
	Stage  string `json:"stage,omitempty"`
	Status int    `json:"status,omitempty"`
	Body   string `json:"body,omitempty"`
	Error  string `json:"error,omitempty"`
	Chains int    `json:"chains,omitempty"`
}

func main() {
	if len(os.Args) < 2 || os.Args[1] != "get" {
		fmt.Fprintln(os.Stderr, "usage: labclient get --ca FILE [--cert FILE --key FILE] [--server-name NAME] [--timeout 2s] [--dial-timeout 1s] URL")
		os.Exit(2)
	}
	res, code := get(os.Args[2:])
	out, _ := json.Marshal(res)
	fmt.Println(string(out))
	os.Exit(code)
}

func fail(stage string, err error) (result, int) {
	text := err.Error()
	if len(text) > 400 {
		text = text[:400]
	}
	// A TLS alert from the peer is a refusal whenever it arrives (TLS 1.3 servers reject a client
	// certificate after the client's Finished, i.e. on the first read).
	if strings.Contains(text, "remote error: tls:") {
		stage = "tls-alert"
	}
	code := 1
	if stage == "setup" {
		code = 2
	}
	return result{Stage: stage, Error: text}, code
}

func isCertificateError(err error) bool {
	var unknown x509.UnknownAuthorityError
	var invalid x509.CertificateInvalidError
	var hostname x509.HostnameError
	var constraint x509.ConstraintViolationError
	var unhandled x509.UnhandledCriticalExtension
	return errors.As(err, &unknown) || errors.As(err, &invalid) || errors.As(err, &hostname) ||
		errors.As(err, &constraint) || errors.As(err, &unhandled) || strings.HasPrefix(err.Error(), "x509: ") ||
		strings.Contains(err.Error(), "tls: failed to verify certificate")
}

func isClosedByPeer(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.EPIPE)
}

func get(args []string) (result, int) {
	fs := flag.NewFlagSet("get", flag.ContinueOnError)
	caFile := fs.String("ca", "", "PEM file of trusted CAs (every certificate is an anchor, as in a kubeconfig)")
	certFile := fs.String("cert", "", "client certificate (PEM)")
	keyFile := fs.String("key", "", "client key (PEM)")
	serverName := fs.String("server-name", "", "name to verify and send as SNI (default: the URL's host)")
	userAgent := fs.String("user-agent", "kubepki-probe", "User-Agent header")
	timeout := fs.Duration("timeout", 2*time.Second, "whole request")
	dialTimeout := fs.Duration("dial-timeout", 0, "TCP connect (default: the whole timeout)")
	if err := fs.Parse(args); err != nil {
		return fail("setup", err)
	}
	if *caFile == "" || fs.NArg() != 1 || (*certFile == "") != (*keyFile == "") {
		return fail("setup", errors.New("need --ca, one URL, and --cert with --key"))
	}
	target, err := url.Parse(fs.Arg(0))
	if err != nil || target.Scheme != "https" || target.Port() == "" {
		return fail("setup", fmt.Errorf("want https://host:port/path, not %q", fs.Arg(0)))
	}
	pemData, err := os.ReadFile(*caFile)
	if err != nil {
		return fail("setup", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pemData) {
		return fail("setup", fmt.Errorf("%s: no PEM certificate", *caFile))
	}
	name := *serverName
	if name == "" {
		name = target.Hostname()
	}
	config := &tls.Config{RootCAs: roots, ServerName: name, MinVersion: tls.VersionTLS12}
	if *certFile != "" {
		pair, err := tls.LoadX509KeyPair(*certFile, *keyFile)
		if err != nil {
			return fail("setup", err)
		}
		config.Certificates = []tls.Certificate{pair}
	}
	deadline := time.Now().Add(*timeout)
	dialBy := deadline
	if *dialTimeout > 0 && time.Now().Add(*dialTimeout).Before(deadline) {
		dialBy = time.Now().Add(*dialTimeout)
	}
	ctx, cancel := context.WithDeadline(context.Background(), dialBy)
	defer cancel()
	raw, err := (&net.Dialer{}).DialContext(ctx, "tcp", target.Host)
	if err != nil {
		return fail("dial", err)
	}
	defer raw.Close()
	if err := raw.SetDeadline(deadline); err != nil {
		return fail("dial", err)
	}
	conn := tls.Client(raw, config)
	if err := conn.Handshake(); err != nil {
		switch {
		case isCertificateError(err):
			return fail("certificate", err)
		case isClosedByPeer(err):
			return fail("handshake-closed", err)
		default:
			return fail("handshake", err)
		}
	}
	chains := len(conn.ConnectionState().VerifiedChains)
	req, err := http.NewRequest(http.MethodGet, target.String(), nil)
	if err != nil {
		return fail("setup", err)
	}
	req.Header.Set("User-Agent", *userAgent)
	req.Close = true
	if err := req.Write(conn); err != nil {
		return fail("request", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		return fail("request", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fail("request", err)
	}
	text := string(body)
	if len(text) > 200 {
		text = text[:200]
	}
	if resp.StatusCode != http.StatusOK {
		res, code := fail("status", fmt.Errorf("HTTP %d: %s", resp.StatusCode, strings.TrimSpace(text)))
		res.Status = resp.StatusCode
		return res, code
	}
	return result{OK: true, Status: resp.StatusCode, Body: text, Chains: chains}, 0
}
