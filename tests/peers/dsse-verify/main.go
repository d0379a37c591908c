// dsse-verify: an independent DSSE verifier for Countersign's tests.
//
// It verifies a DSSE envelope (JSON) with one PEM public key, using nothing but
// github.com/secure-systems-lab/go-securesystemslib (the envelope verifier and key loader that
// in-toto-golang and many attestation tools use), exactly as a user of that library would.
//
// Usage: dsse-verify <public-key.pem> <envelope.json>
//
// Exit 0 and "verified: payloadType=<type> keyid=<keyid>" on stdout when the envelope verifies;
// exit 1 and "dsse-verify: <reason>" on stderr when it does not; exit 2 on bad usage.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"

	"github.com/secure-systems-lab/go-securesystemslib/dsse"
	"github.com/secure-systems-lab/go-securesystemslib/signerverifier"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: dsse-verify <public-key.pem> <envelope.json>")
		os.Exit(2)
	}
	if err := run(os.Args[1], os.Args[2]); err != nil {
		fmt.Fprintf(os.Stderr, "dsse-verify: %v\n", err)
		os.Exit(1)
	}
}

func run(keyPath, envelopePath string) error {
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return err
	}
	key, err := signerverifier.LoadKey(keyPEM)
	if err != nil {
		return fmt.Errorf("loading the public key: %w", err)
	}
	verifier, err := newVerifier(key)
	if err != nil {
		return err
	}
	envelopeJSON, err := os.ReadFile(envelopePath)
	if err != nil {
		return err
	}
	var envelope dsse.Envelope
	if err := json.Unmarshal(envelopeJSON, &envelope); err != nil {
		return fmt.Errorf("parsing the envelope: %w", err)
	}
	envelopeVerifier, err := dsse.NewEnvelopeVerifier(verifier)
	if err != nil {
		return err
	}
	accepted, err := envelopeVerifier.Verify(context.Background(), &envelope)
	if err != nil {
		return err
	}
	fmt.Printf("verified: payloadType=%s keyid=%s\n", envelope.PayloadType, accepted[0].KeyID)
	return nil
}

func newVerifier(key *signerverifier.SSLibKey) (dsse.Verifier, error) {
	switch key.KeyType {
	case signerverifier.ECDSAKeyType:
		return signerverifier.NewECDSASignerVerifierFromSSLibKey(key)
	case signerverifier.RSAKeyType:
		return signerverifier.NewRSAPSSSignerVerifierFromSSLibKey(key)
	case signerverifier.ED25519KeyType:
		return signerverifier.NewED25519SignerVerifierFromSSLibKey(key)
	default:
		return nil, fmt.Errorf("unsupported key type %q", key.KeyType)
	}
}
