// Package pluginpb holds the Go code generated from
// proto/goplugins/plugin/v1/plugin.proto: the messages and the gRPC client
// and server of the goplugins.plugin.v1.Plugin service. Do not edit the
// generated files; change the .proto and run `go generate
// ./internal/pluginpb` (needs protoc, protoc-gen-go and protoc-gen-go-grpc
// on PATH; see docs/GRPC.md).
package pluginpb

//go:generate protoc --proto_path=../../proto --go_out=../.. --go_opt=module=github.com/goplugins/goplugins --go-grpc_out=../.. --go-grpc_opt=module=github.com/goplugins/goplugins goplugins/plugin/v1/plugin.proto
