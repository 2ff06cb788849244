package wire

// The JSON payloads of the control frames. Request and response bodies of
// CALL and RESULT use the negotiated codec instead; PERSIST, RESTORE,
// CHECKPOINT and RESUME carry raw bytes.

// Hello is the payload of HELLO, the host's first frame.
type Hello struct {
	// Protocols lists the protocol versions the host speaks.
	Protocols []int `json:"protocols"`
	// Codec names the codec of CALL and RESULT payloads ("json").
	Codec string `json:"codec"`
	// MaxFrameSize is the largest length field the host accepts.
	MaxFrameSize int `json:"max_frame_size"`
	// Name is the plugin name the host expects.
	Name string `json:"name,omitempty"`
}

// Welcome is the payload of WELCOME, the plugin's answer to HELLO.
type Welcome struct {
	// Protocol is the protocol version the plugin chose from Hello.Protocols.
	Protocol int `json:"protocol"`
	// MaxFrameSize is the largest length field the plugin accepts.
	MaxFrameSize int `json:"max_frame_size"`
	// Info describes the plugin.
	Info
}

// Info describes a plugin: the payload of CHECK_COMPAT and part of WELCOME.
type Info struct {
	Name        string            `json:"name"`
	Version     string            `json:"version"`
	Description string            `json:"description,omitempty"`
	Surfaces    []string          `json:"surfaces,omitempty"`
	Metadata    map[string]string `json:"metadata,omitempty"`
}

// ErrorReply is the payload of ERROR.
type ErrorReply struct {
	Code      string `json:"code"`
	Message   string `json:"message"`
	Retryable bool   `json:"retryable,omitempty"`
}

// Error codes the protocol itself uses in ErrorReply.Code. Plugins may use
// any other code for their own errors.
const (
	CodeProtocolVersion = "protocol_version" // no shared protocol version (id 0)
	CodeCodec           = "codec"            // the plugin lacks the host's codec (id 0)
	CodeFrameTooLarge   = "frame_too_large"  // a request or its answer is over a limit
	CodeBadRequest      = "bad_request"      // the payload does not decode
	CodeUnsupported     = "unsupported"      // the plugin lacks that surface or frame type
	CodePanic           = "panic"            // the handler panicked
	CodeCanceled        = "canceled"         // the request was cancelled
	CodeShuttingDown    = "shutting_down"    // the plugin is shutting down
	CodeError           = "error"            // an error without a code of its own
	CodeNotGranted      = "not_granted"      // protocol 2: the host function is not granted to the plugin
	CodeOverloaded      = "overloaded"       // protocol 2: too many host calls running; retryable
	CodeTimeout         = "timeout"          // protocol 2: the host call ran past the host's timeout
)
