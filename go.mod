module github.com/goplugins/goplugins

go 1.26.8

require (
	github.com/Masterminds/semver/v3 v3.5.0
	github.com/agilira/go-errors v1.1.2
)

require (
	github.com/agilira/go-timecache v1.0.3 // indirect
	github.com/stretchr/testify v1.12.1 // indirect
	go.uber.org/goleak v1.3.0 // indirect
	golang.org/x/sys v0.49.0 // indirect
)
