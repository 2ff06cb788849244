module github.com/goplugins/goplugins

go 1.26.8

require (
	github.com/Masterminds/semver/v3 v3.5.0
	github.com/agilira/argus v1.4.2
	github.com/agilira/go-errors v1.1.2
	github.com/stretchr/testify v1.12.1
	go.uber.org/goleak v1.3.0
	go.yaml.in/yaml/v3 v3.0.5
)

require (
	github.com/agilira/flash-flags v1.1.8 // indirect
	github.com/agilira/go-timecache v1.0.3 // indirect
	github.com/mattn/go-sqlite3 v1.14.44 // indirect
)
