package pluginpb

// The names both sides of the HostCalls stream agree on (see the
// HostCalls RPC in plugin.proto).
const (
	// MDLink is the request metadata key of the HostCalls stream that
	// carries the link token (decimal), the ExecuteRequest.link of the
	// requests whose host calls go over the stream.
	MDLink = "goplugins-link"
	// MDHostCodec is the request metadata key of the HostCalls stream that
	// names the codec of host-call bodies.
	MDHostCodec = "goplugins-host-codec"
	// MDRequest is the request metadata key of a unary call other than
	// Execute that carries its request id (decimal), with MDLink: the
	// ExecuteRequest fields of the other calls, for the host calls their
	// handlers make.
	MDRequest = "goplugins-request"
	// MDHostCalls is the response header key with which the plugin says,
	// with the value Ready, that it relays host calls over the stream.
	MDHostCalls = "goplugins-host-calls"
	Ready       = "ready"
	// MaxHostMessage is the largest HostCall or HostReply either side
	// sends: grpc-go's default limit of a received message, less room for
	// the message's own fields. Larger bodies are refused with
	// "frame_too_large" and the stream serves on.
	MaxHostMessage = 4<<20 - 1024
)
