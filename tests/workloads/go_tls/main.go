// A Go HTTPS server and client on crypto/tls, for the TLS-in-clear test of Go's TLS stack
// (tests/tests/tls_spans.rs): the agent's crypto/tls probes should turn its traffic into the
// spans of clear-text HTTP, over HTTP/1.1 and over HTTP/2 (which Go negotiates by ALPN).
//
// Usage:
//
//	go_tls serve LISTEN CERT KEY   HTTPS on LISTEN: GET /hello/ID answers "hello ID", anything
//	                               else 404. HTTP/1.1 and HTTP/2.
//	go_tls call BASE CA PROTO N    N sequential GETs of BASE/hello/PROTO-I (I from 1) on one
//	                               kept-alive connection, then one GET of BASE/missing; PROTO is
//	                               h1 or h2; the server's certificate is checked against CA.
//	                               Exits non-zero on any unexpected answer.
//
// Standard library only: it builds offline with Debian's golang package.
package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"strconv"
	"strings"
)

func main() {
	if len(os.Args) < 2 {
		log.Fatal("usage: go_tls serve LISTEN CERT KEY | go_tls call BASE CA PROTO N")
	}
	switch os.Args[1] {
	case "serve":
		if len(os.Args) != 5 {
			log.Fatal("usage: go_tls serve LISTEN CERT KEY")
		}
		serve(os.Args[2], os.Args[3], os.Args[4])
	case "call":
		if len(os.Args) != 6 {
			log.Fatal("usage: go_tls call BASE CA PROTO N")
		}
		n, err := strconv.Atoi(os.Args[5])
		if err != nil {
			log.Fatalf("N: %v", err)
		}
		call(os.Args[2], os.Args[3], os.Args[4], n)
	default:
		log.Fatalf("unknown mode %q", os.Args[1])
	}
}

func serve(listen, cert, key string) {
	mux := http.NewServeMux()
	mux.HandleFunc("/hello/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s", strings.TrimPrefix(r.URL.Path, "/hello/"))
	})
	log.Fatal(http.ListenAndServeTLS(listen, cert, key, mux))
}

func call(base, caFile, proto string, n int) {
	pem, err := os.ReadFile(caFile)
	if err != nil {
		log.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		log.Fatalf("no certificate in %s", caFile)
	}
	transport := &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: roots},
		ForceAttemptHTTP2: proto == "h2",
	}
	if proto != "h2" {
		// An empty map (not nil) turns HTTP/2 off.
		transport.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	client := &http.Client{Transport: transport}
	get := func(path string, want int) {
		resp, err := client.Get(base + path)
		if err != nil {
			log.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want {
			log.Fatalf("%s: status %d, want %d", path, resp.StatusCode, want)
		}
		if (proto == "h2") != (resp.ProtoMajor == 2) {
			log.Fatalf("%s: protocol %s, want %s", path, resp.Proto, proto)
		}
		if want == 200 && !strings.HasPrefix(string(body), "hello ") {
			log.Fatalf("%s: body %q", path, body)
		}
	}
	for i := 1; i <= n; i++ {
		get(fmt.Sprintf("/hello/%s-%d", proto, i), 200)
	}
	get("/missing", 404)
}
