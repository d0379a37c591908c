// referrers-registry: an OCI registry that serves the OCI 1.1 Referrers API, for Countersign's tests.
//
// The registry is go-containerregistry's (github.com/google/go-containerregistry/pkg/registry, the
// one `crane registry serve` runs and cosign's own tests push to), with its Referrers API switched
// on: `crane registry serve` leaves it off and has no flag for it. These lines only choose the
// options and the address; the protocol is the library's.
//
// CNCF Distribution (the other registry peer) serves no Referrers API, so the exporter's
// tag-schema fallback is what meets it; this registry is where the Referrers API path meets a real
// implementation. zot, which serves it too, is not on the Go module proxy.
//
// Usage: referrers-registry --address 127.0.0.1:<port> [--disk <dir>]
//
// Manifests are held in memory (a restart forgets them); blobs in memory or, with --disk, on disk.
// Only loopback addresses are accepted: the registry has no authentication.
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
)

func main() {
	address := flag.String("address", "", "loopback address to listen on, such as 127.0.0.1:5000")
	disk := flag.String("disk", "", "directory to keep blobs in (default: memory)")
	flag.Parse()
	if err := run(*address, *disk); err != nil {
		fmt.Fprintf(os.Stderr, "referrers-registry: %v\n", err)
		os.Exit(1)
	}
}

func run(address, disk string) error {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return fmt.Errorf("--address %q: %w", address, err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("--address %q: only a loopback IP address is accepted", address)
	}
	options := []registry.Option{registry.WithReferrersSupport(true)}
	if disk != "" {
		if err := os.MkdirAll(disk, 0o700); err != nil {
			return fmt.Errorf("--disk %q: %w", disk, err)
		}
		options = append(options, registry.WithBlobHandler(registry.NewDiskBlobHandler(disk)))
	}
	listener, err := net.Listen("tcp", address)
	if err != nil {
		return err
	}
	log.Printf("serving the OCI distribution API with referrers on %s", listener.Addr())
	server := &http.Server{
		Handler:           registry.New(options...),
		ReadHeaderTimeout: 10 * time.Second,
	}
	return server.Serve(listener)
}
