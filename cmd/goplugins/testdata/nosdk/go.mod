module github.com/goplugins/goplugins

go 1.26
