module github.com/goplugins/goplugins

go 1.26.8

require (
	github.com/Masterminds/semver/v3 v3.5.0
	github.com/agilira/go-errors v1.1.2
	github.com/stretchr/testify v1.12.1
	go.uber.org/goleak v1.3.0
	golang.org/x/sys v0.49.0
)

require (
	github.com/agilira/go-timecache v1.0.3 // indirect
	go.yaml.in/yaml/v3 v3.0.5 // indirect
)
