package pluginpb

// The launch contract between a host and a gRPC plugin child it starts:
// environment variables the host sets, and names both sides agree on.
const (
	// EnvCookie is set to CookieValue in every child the host starts, so
	// that a plugin run by hand can say so instead of failing obscurely.
	EnvCookie = "GOPLUGINS_GRPC_COOKIE"
	// CookieValue is EnvCookie's value.
	CookieValue = "goplugins-grpc-v1-7f3c2a"
	// EnvSocket is the path of the unix socket the child listens on. It
	// lies in a directory only the host's user can enter.
	EnvSocket = "GOPLUGINS_GRPC_SOCKET"
	// EnvServerCert and EnvServerKey hold, in automatic mTLS mode, the PEM
	// certificate and key the child serves with; EnvClientCA holds the PEM
	// certificate the host presents, the only client the child accepts.
	EnvServerCert = "GOPLUGINS_GRPC_SERVER_CERT"
	EnvServerKey  = "GOPLUGINS_GRPC_SERVER_KEY"
	EnvClientCA   = "GOPLUGINS_GRPC_CLIENT_CA"
	// AutoMTLSServerName is the DNS name in the child's automatic mTLS
	// certificate; the host checks it.
	AutoMTLSServerName = "goplugins-plugin"
	// ServiceName is the service name the plugin reports in the standard
	// grpc.health.v1 health service.
	ServiceName = "goplugins.plugin.v1.Plugin"
)
