// spire-code-signing: a SPIRE server CredentialComposer plugin that adds the code-signing
// extended key usage to the X509-SVIDs of the SPIFFE IDs it is configured with, and to no other.
//
// Why: sigstore-go (inside cosign and sigstore's policy-controller) requires a signing
// certificate to carry the code-signing extended key usage (1.3.6.1.5.5.7.3.3). SPIRE's X509-SVIDs
// carry serverAuth and clientAuth only, so a Sigstore bundle signed with a plain SVID is refused
// ("failed to verify leaf certificate"). Countersign's attestor signs its attestations with its
// SVID; with this plugin, only the attestor's SVID gets code signing, so cosign accepts the
// attestor's bundles and still refuses one signed by any other workload (a TaskRun's SVID).
//
// The SVID keeps serverAuth and clientAuth (SPIRE refuses an X509-SVID without both): the
// extended key usage extension is replaced by serverAuth, clientAuth, codeSigning.
//
// Configuration (server.conf):
//
//	CredentialComposer "countersign_code_signing" {
//	    plugin_cmd = "/path/to/spire-code-signing"
//	    plugin_data {
//	        code_signing_ids = ["spiffe://example.org/countersign/attestor"]
//	    }
//	}
//
// An empty or missing list is refused at configuration: the plugin never signs for everyone.
package main

import (
	"context"
	"encoding/asn1"
	"net/url"
	"sync"

	"github.com/hashicorp/hcl"
	"github.com/spiffe/spire-plugin-sdk/pluginmain"
	credentialcomposerv1 "github.com/spiffe/spire-plugin-sdk/proto/spire/plugin/server/credentialcomposer/v1"
	configv1 "github.com/spiffe/spire-plugin-sdk/proto/spire/service/common/config/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

var (
	oidExtendedKeyUsage = asn1.ObjectIdentifier{2, 5, 29, 37}
	oidServerAuth       = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 3, 1}
	oidClientAuth       = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 3, 2}
	oidCodeSigning      = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 3, 3}
)

// Config is the plugin_data block.
type Config struct {
	CodeSigningIDs []string `hcl:"code_signing_ids"`
}

// Plugin adds code signing to the configured SPIFFE IDs' X509-SVIDs.
type Plugin struct {
	credentialcomposerv1.UnimplementedCredentialComposerServer
	configv1.UnimplementedConfigServer

	mu  sync.RWMutex
	ids map[string]struct{}
}

// Configure reads the list of SPIFFE IDs; each must be a spiffe:// URI.
func (p *Plugin) Configure(_ context.Context, req *configv1.ConfigureRequest) (*configv1.ConfigureResponse, error) {
	config := new(Config)
	if err := hcl.Decode(config, req.HclConfiguration); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "failed to decode configuration: %v", err)
	}
	if len(config.CodeSigningIDs) == 0 {
		return nil, status.Error(codes.InvalidArgument, "code_signing_ids must name at least one SPIFFE ID")
	}
	ids := make(map[string]struct{}, len(config.CodeSigningIDs))
	for _, id := range config.CodeSigningIDs {
		parsed, err := url.Parse(id)
		if err != nil || parsed.Scheme != "spiffe" || parsed.Host == "" || parsed.RawQuery != "" || parsed.Fragment != "" {
			return nil, status.Errorf(codes.InvalidArgument, "code_signing_ids: %q is not a SPIFFE ID", id)
		}
		ids[id] = struct{}{}
	}
	p.mu.Lock()
	p.ids = ids
	p.mu.Unlock()
	return &configv1.ConfigureResponse{}, nil
}

// ComposeWorkloadX509SVID adds code signing to a configured SPIFFE ID's SVID; any other SVID is
// left as SPIRE made it.
func (p *Plugin) ComposeWorkloadX509SVID(_ context.Context, req *credentialcomposerv1.ComposeWorkloadX509SVIDRequest) (*credentialcomposerv1.ComposeWorkloadX509SVIDResponse, error) {
	p.mu.RLock()
	ids := p.ids
	p.mu.RUnlock()
	if ids == nil {
		return nil, status.Error(codes.FailedPrecondition, "not configured")
	}
	attributes := req.GetAttributes()
	if _, ok := ids[req.GetSpiffeId()]; !ok || attributes == nil {
		return &credentialcomposerv1.ComposeWorkloadX509SVIDResponse{Attributes: attributes}, nil
	}
	usage, err := asn1.Marshal([]asn1.ObjectIdentifier{oidServerAuth, oidClientAuth, oidCodeSigning})
	if err != nil {
		return nil, status.Errorf(codes.Internal, "encoding the extended key usage: %v", err)
	}
	extensions := make([]*credentialcomposerv1.X509Extension, 0, len(attributes.ExtraExtensions)+1)
	for _, extension := range attributes.ExtraExtensions {
		if extension.GetOid() != oidExtendedKeyUsage.String() {
			extensions = append(extensions, extension)
		}
	}
	attributes.ExtraExtensions = append(extensions, &credentialcomposerv1.X509Extension{
		Oid:   oidExtendedKeyUsage.String(),
		Value: usage,
	})
	return &credentialcomposerv1.ComposeWorkloadX509SVIDResponse{Attributes: attributes}, nil
}

func main() {
	plugin := new(Plugin)
	pluginmain.Serve(
		credentialcomposerv1.CredentialComposerPluginServer(plugin),
		configv1.ConfigServiceServer(plugin),
	)
}
