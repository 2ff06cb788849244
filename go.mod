module github.com/goplugins/goplugins

go 1.26.8

require (
	github.com/Masterminds/semver/v3 v3.5.0
	github.com/agilira/argus v1.4.2
	github.com/agilira/go-errors v1.1.2
	github.com/stretchr/testify v1.12.1
	go.uber.org/goleak v1.3.0
	go.yaml.in/yaml/v3 v3.0.5
	golang.org/x/sys v0.49.0
	google.golang.org/grpc v1.85.0
	google.golang.org/protobuf v1.36.12
)

require (
	github.com/agilira/flash-flags v1.1.8 // indirect
	github.com/agilira/go-timecache v1.0.3 // indirect
	github.com/mattn/go-sqlite3 v1.14.44 // indirect
	golang.org/x/net v0.60.0 // indirect
	golang.org/x/text v0.42.0 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20260817212433-ac3dfec99bb1 // indirect
)
