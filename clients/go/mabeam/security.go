package mabeam

// Credentials for a cluster with security on (docs/security.md, "What clients send"): a bearer token
// in the "authorization" metadata of every call, and TLS trusting the cluster's CA with a client
// certificate (mTLS). The same settings and environment variables as the Python SDK's
// mabeam_client.security:
//
//	MABEAM_TOKEN=<jwt>                          # or MABEAM_TOKEN_FILE=/path/to/token
//	MABEAM_TLS_CA=/etc/mabeam/tls/ca.crt        # trust this CA for the servers' certificates...
//	MABEAM_TLS_CERT=/etc/mabeam/tls/client.crt  # ...and present this certificate and key (mTLS)
//	MABEAM_TLS_KEY=/etc/mabeam/tls/client.key
//	MABEAM_TLS_SERVER_NAME=node-1               # optional: the name to verify instead of the address's host

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"strings"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// Security is a token and/or TLS files (paths); empty fields are off. Every Dial* function without
// options uses DefaultSecurity (the environment); pass Security.DialOption() to choose per client:
//
//	creds, err := mabeam.Security{Token: token, TLSCA: "ca.crt", TLSCert: "me.crt", TLSKey: "me.key"}.DialOption()
//	mesh, err := mabeam.DialMesh("10.0.0.5:7100", creds)
type Security struct {
	Token      string
	TLSCA      string
	TLSCert    string
	TLSKey     string
	ServerName string
}

// SecurityFromEnv reads MABEAM_TOKEN (or MABEAM_TOKEN_FILE) and MABEAM_TLS_{CA,CERT,KEY,SERVER_NAME}.
func SecurityFromEnv() (Security, error) {
	s := Security{Token: strings.TrimSpace(os.Getenv("MABEAM_TOKEN")), TLSCA: os.Getenv("MABEAM_TLS_CA"),
		TLSCert: os.Getenv("MABEAM_TLS_CERT"), TLSKey: os.Getenv("MABEAM_TLS_KEY"),
		ServerName: os.Getenv("MABEAM_TLS_SERVER_NAME")}
	if path := os.Getenv("MABEAM_TOKEN_FILE"); s.Token == "" && path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			return s, &Error{Code: codes.InvalidArgument, Message: fmt.Sprintf("MABEAM_TOKEN_FILE: %v", err)}
		}
		s.Token = strings.TrimSpace(string(data))
	}
	return s, s.check()
}

var (
	defaultOnce     sync.Once
	defaultSecurity Security
	defaultErr      error
)

// DefaultSecurity is what clients dialled without options use: the environment, read once.
func DefaultSecurity() (Security, error) {
	defaultOnce.Do(func() { defaultSecurity, defaultErr = SecurityFromEnv() })
	return defaultSecurity, defaultErr
}

// TLS reports whether connections use TLS (a CA is given).
func (s Security) TLS() bool { return s.TLSCA != "" }

func (s Security) check() error {
	if (s.TLSCert == "") != (s.TLSKey == "") {
		return &Error{Code: codes.InvalidArgument, Message: "a client certificate needs its key (TLSCert and TLSKey together)"}
	}
	if s.TLSCert != "" && s.TLSCA == "" {
		return &Error{Code: codes.InvalidArgument, Message: "a client certificate is sent over TLS: give TLSCA (the servers' CA) too"}
	}
	return nil
}

// DialOption is one grpc.DialOption carrying these credentials: TLS (with the client certificate) or
// plaintext, and the token as per-call credentials (over plaintext too: a dev cluster on loopback).
func (s Security) DialOption() (grpc.DialOption, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	transport := insecure.NewCredentials()
	if s.TLS() {
		pem, err := os.ReadFile(s.TLSCA)
		if err != nil {
			return nil, &Error{Code: codes.InvalidArgument, Message: fmt.Sprintf("TLS CA: %v", err)}
		}
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return nil, &Error{Code: codes.InvalidArgument, Message: fmt.Sprintf("TLS CA %s holds no PEM certificate", s.TLSCA)}
		}
		config := &tls.Config{RootCAs: roots, ServerName: s.ServerName, MinVersion: tls.VersionTLS12}
		if s.TLSCert != "" {
			pair, err := tls.LoadX509KeyPair(s.TLSCert, s.TLSKey)
			if err != nil {
				return nil, &Error{Code: codes.InvalidArgument, Message: fmt.Sprintf("TLS client certificate: %v", err)}
			}
			config.Certificates = []tls.Certificate{pair}
		}
		transport = credentials.NewTLS(config)
	}
	return grpc.WithCredentialsBundle(bundle{transport: transport, token: bearer{token: s.Token, tls: s.TLS()}}), nil
}

// dialOptions: the security's option for dial (with the defaults when the caller gave none).
func securityOptions() ([]grpc.DialOption, error) {
	s, err := DefaultSecurity()
	if err != nil {
		return nil, err
	}
	opt, err := s.DialOption()
	if err != nil {
		return nil, err
	}
	return []grpc.DialOption{opt}, nil
}

// bundle pairs transport credentials with the token (credentials.Bundle: one dial option for both).
type bundle struct {
	transport credentials.TransportCredentials
	token     bearer
}

func (b bundle) TransportCredentials() credentials.TransportCredentials { return b.transport }
func (b bundle) PerRPCCredentials() credentials.PerRPCCredentials       { return b.token }
func (b bundle) NewWithMode(string) (credentials.Bundle, error)         { return b, nil }

// bearer adds "authorization: Bearer <token>" to every call (nothing without a token).
type bearer struct {
	token string
	tls   bool
}

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	if b.token == "" {
		return nil, nil
	}
	return map[string]string{"authorization": "Bearer " + b.token}, nil
}

// RequireTransportSecurity: only when TLS is configured (a token over plaintext is a dev cluster on
// loopback, which the daemons allow only there).
func (b bearer) RequireTransportSecurity() bool { return b.tls }
