// Command kubelet-plugin-registrar registers a CSI driver with the kubelet through the kubelet's
// plugin-registration protocol (k8s.io/kubelet/pkg/apis/pluginregistration/v1): it serves the
// Registration service on a socket in the kubelet's plugins_registry directory, which the kubelet
// watches; the kubelet then calls GetInfo, learns the driver's name and CSI endpoint, and reports
// the outcome with NotifyRegistrationStatus.
//
// It is Countersign's own small program for tests, in the role the Kubernetes CSI project's
// node-driver-registrar plays in a cluster (which the Go module proxy does not serve here). The
// CSI driver and the kubelet it introduces to each other are the real programs.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"

	"google.golang.org/grpc"
	registration "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

type registrar struct {
	registration.UnimplementedRegistrationServer
	driverName string
	endpoint   string
}

func (r *registrar) GetInfo(context.Context, *registration.InfoRequest) (*registration.PluginInfo, error) {
	return &registration.PluginInfo{
		Type:              registration.CSIPlugin,
		Name:              r.driverName,
		Endpoint:          r.endpoint,
		SupportedVersions: []string{"1.0.0"},
	}, nil
}

func (r *registrar) NotifyRegistrationStatus(_ context.Context, status *registration.RegistrationStatus) (*registration.RegistrationStatusResponse, error) {
	if status.PluginRegistered {
		fmt.Fprintf(os.Stderr, "registered %s with the kubelet (endpoint %s)\n", r.driverName, r.endpoint)
	} else {
		fmt.Fprintf(os.Stderr, "the kubelet refused %s: %s\n", r.driverName, status.Error)
	}
	return &registration.RegistrationStatusResponse{}, nil
}

func main() {
	driverName := flag.String("driver-name", "csi.spiffe.io", "the CSI driver's name")
	endpoint := flag.String("csi-endpoint", "", "the CSI driver's socket path, as the kubelet reaches it")
	registrationSocket := flag.String("registration-socket", "", "the socket to serve, in the kubelet's plugins_registry directory")
	flag.Parse()
	if *endpoint == "" || *registrationSocket == "" {
		fmt.Fprintln(os.Stderr, "-csi-endpoint and -registration-socket are required")
		os.Exit(2)
	}
	_ = os.Remove(*registrationSocket)
	listener, err := net.Listen("unix", *registrationSocket)
	if err != nil {
		fmt.Fprintf(os.Stderr, "listening on %s: %v\n", *registrationSocket, err)
		os.Exit(1)
	}
	server := grpc.NewServer()
	registration.RegisterRegistrationServer(server, &registrar{driverName: *driverName, endpoint: *endpoint})
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-signals
		server.Stop()
		_ = os.Remove(*registrationSocket)
	}()
	fmt.Fprintf(os.Stderr, "serving plugin registration for %s on %s\n", *driverName, *registrationSocket)
	if err := server.Serve(listener); err != nil {
		fmt.Fprintf(os.Stderr, "serving: %v\n", err)
		os.Exit(1)
	}
}
