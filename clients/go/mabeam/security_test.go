package mabeam

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	v1 "github.com/mabeam/mabeam/clients/go/gen/mabeamv1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// pki writes a CA, a server certificate for 127.0.0.1 and a client certificate into dir.
func pki(t *testing.T, dir string) (ca *x509.CertPool, server tls.Certificate) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTemplate := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTemplate, caTemplate, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	write := func(name, kind string, der []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("ca.crt", "CERTIFICATE", caDER)
	issue := func(serial int64, cn string, usage x509.ExtKeyUsage) ([]byte, *ecdsa.PrivateKey) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		template := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			ExtKeyUsage: []x509.ExtKeyUsage{usage}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}}
		der, err := x509.CreateCertificate(rand.Reader, template, caCert, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		return der, key
	}
	clientDER, clientKey := issue(2, "client", x509.ExtKeyUsageClientAuth)
	write("client.crt", "CERTIFICATE", clientDER)
	keyDER, _ := x509.MarshalECPrivateKey(clientKey)
	write("client.key", "EC PRIVATE KEY", keyDER)
	serverDER, serverKey := issue(3, "node-1", x509.ExtKeyUsageServerAuth)
	ca = x509.NewCertPool()
	ca.AddCert(caCert)
	return ca, tls.Certificate{Certificate: [][]byte{serverDER}, PrivateKey: serverKey}
}

// fakeMesh answers Ping with the authorization metadata and the client certificate's name it saw (as
// the node id and address).
type fakeMesh struct {
	v1.UnimplementedMeshServiceServer
}

func (fakeMesh) Ping(ctx context.Context, _ *v1.PingRequest) (*v1.PingResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	if len(md.Get("authorization")) == 0 {
		return nil, status.Error(codes.Unauthenticated, "no token")
	}
	subject := "-"
	if p, ok := peer.FromContext(ctx); ok {
		if info, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(info.State.PeerCertificates) > 0 {
			subject = info.State.PeerCertificates[0].Subject.CommonName
		}
	}
	return &v1.PingResponse{Node: &v1.NodeInfo{NodeId: md.Get("authorization")[0], GrpcAddress: subject}}, nil
}

func serve(t *testing.T, opts ...grpc.ServerOption) string {
	t.Helper()
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	server := grpc.NewServer(opts...)
	v1.RegisterMeshServiceServer(server, fakeMesh{})
	go func() { _ = server.Serve(listener) }()
	t.Cleanup(server.Stop)
	return listener.Addr().String()
}

func TestMutualTLSWithABearerToken(t *testing.T) {
	dir := t.TempDir()
	ca, serverCert := pki(t, dir)
	address := serve(t, grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{serverCert},
		ClientCAs: ca, ClientAuth: tls.RequireAndVerifyClientCert})))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	secure := Security{Token: "tok-1", TLSCA: filepath.Join(dir, "ca.crt"), TLSCert: filepath.Join(dir, "client.crt"),
		TLSKey: filepath.Join(dir, "client.key")}
	creds, err := secure.DialOption()
	if err != nil {
		t.Fatal(err)
	}
	mesh, err := DialMesh(address, creds)
	if err != nil {
		t.Fatal(err)
	}
	defer mesh.Close()
	pong, err := mesh.Ping(ctx)
	if err != nil || pong.GetNode().GetNodeId() != "Bearer tok-1" || pong.GetNode().GetGrpcAddress() != "client" {
		t.Fatalf("ping over mTLS: %v, %v", pong, err)
	}

	// Without a client certificate the server refuses the handshake: UNAVAILABLE, typed.
	noCert, _ := Security{Token: "tok-1", TLSCA: secure.TLSCA}.DialOption()
	bare, _ := DialMesh(address, noCert)
	defer bare.Close()
	if _, err := bare.Ping(ctx); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("ping without a client certificate: %v, want UNAVAILABLE", err)
	}
}

func TestTheEnvironmentIsTheDefault(t *testing.T) {
	address := serve(t) // plaintext: a dev cluster on loopback, the token still sent
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "token"), []byte("tok-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("MABEAM_TOKEN", "")
	t.Setenv("MABEAM_TOKEN_FILE", filepath.Join(dir, "token"))
	s, err := SecurityFromEnv()
	if err != nil || s.Token != "tok-file" || s.TLS() {
		t.Fatalf("from the environment: %+v, %v", s, err)
	}
	creds, _ := s.DialOption()
	mesh, _ := DialMesh(address, creds)
	defer mesh.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if pong, err := mesh.Ping(ctx); err != nil || pong.GetNode().GetNodeId() != "Bearer tok-file" {
		t.Fatalf("ping with the token over plaintext: %v, %v", pong, err)
	}
	t.Setenv("MABEAM_TLS_CERT", "client.crt")
	if _, err := SecurityFromEnv(); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("a certificate without its key: %v, want INVALID_ARGUMENT", err)
	}
}
