// A Go HTTP service whose handler calls another service from a new goroutine, as Go services
// fan out: the goroutine-aware context test (tests/tests/go_spans.rs) checks that each call's
// client span is the child of the server span of the request that made it.
//
// Usage: go_fanout LISTEN BACKEND
//
//	GET /front/ID  calls http://BACKEND/back/ID from a new goroutine (net/http's default client:
//	               keep-alive, at most 2 idle connections, so under load some calls dial anew),
//	               waits for it and answers "front ID: <what the backend said>".
//	GET /back/ID   answers "back ID".
//
// Standard library only: it builds offline with Debian's golang package.
package main

import (
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"strings"
)

func main() {
	if len(os.Args) != 3 {
		log.Fatal("usage: go_fanout LISTEN BACKEND")
	}
	listen, backend := os.Args[1], os.Args[2]
	http.HandleFunc("/front/", func(w http.ResponseWriter, r *http.Request) {
		id := strings.TrimPrefix(r.URL.Path, "/front/")
		answer := make(chan string, 1)
		go func() {
			resp, err := http.Get("http://" + backend + "/back/" + id)
			if err != nil {
				answer <- "error: " + err.Error()
				return
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				answer <- "error: " + err.Error()
				return
			}
			answer <- strings.TrimSpace(string(body))
		}()
		fmt.Fprintf(w, "front %s: %s\n", id, <-answer)
	})
	http.HandleFunc("/back/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "back %s\n", strings.TrimPrefix(r.URL.Path, "/back/"))
	})
	log.Fatal(http.ListenAndServe(listen, nil))
}
