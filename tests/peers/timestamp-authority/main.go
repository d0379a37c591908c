// timestamp-authority: sigstore's RFC 3161 timestamp authority, for Countersign's tests.
//
// It serves the REST API of github.com/sigstore/timestamp-authority/v2 (its own handlers, signers
// and response builder, configured through viper exactly as `timestamp-server serve` configures
// them) and differs from that command in what it leaves out:
//
//   - the Prometheus listener, which `serve` binds to :2112 on every interface with no flag to
//     move it and exits when the port is taken (so two tests could not each run a TSA, and the
//     tests' loopback-only rule would be broken);
//   - NTP monitoring, which queries public NTP servers (`serve --disable-ntp-monitoring`).
//
// Usage: timestamp-authority -host 127.0.0.1 -port <port> [-signer memory|file
// -key <pem> -chain <pem>] [-include-chain]
//
// GET  /api/v1/timestamp/certchain  the signer's chain (PEM, leaf first)
// POST /api/v1/timestamp            a DER TimeStampReq in, a DER TimeStampResp out
// GET  /ping                        liveness
package main

import (
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/sigstore/timestamp-authority/v2/pkg/log"
	"github.com/sigstore/timestamp-authority/v2/pkg/server"
	"github.com/spf13/viper"
)

func main() {
	host := flag.String("host", "127.0.0.1", "the address to listen on")
	port := flag.Int("port", 0, "the port to listen on")
	signer := flag.String("signer", "memory", "timestamp signer: memory or file")
	keyPath := flag.String("key", "", "PEM private key of the file signer")
	chainPath := flag.String("chain", "", "PEM certificate chain of the file signer (leaf first)")
	includeChain := flag.Bool("include-chain", false, "include the issuing chain in responses when certReq is set")
	flag.Parse()
	if *port == 0 {
		fmt.Fprintln(os.Stderr, "timestamp-authority: -port is required")
		os.Exit(2)
	}

	log.ConfigureLogger("dev")
	viper.Set("timestamp-signer", *signer)
	viper.Set("timestamp-signer-hash", "sha256")
	viper.Set("file-signer-key-path", *keyPath)
	viper.Set("certificate-chain-path", *chainPath)
	viper.Set("include-chain-in-response", *includeChain)
	viper.Set("enforce-intermediate-eku", true)
	viper.Set("default-policy-oid", "1.3.6.1.4.1.57264.2")
	viper.Set("accepted-policy-oids", []string{"1.3.6.1.4.1.57264.2"})

	api := server.NewRestAPIServer(*host, *port, []string{"http"}, false, 10*time.Second, 10*time.Second)
	api.CleanupTimeout = 5 * time.Second
	defer func() { _ = api.Shutdown() }()
	if err := api.Serve(); err != nil {
		log.Logger.Fatal(err)
	}
}
