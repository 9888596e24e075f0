module github.com/wgbore/wgbore

go 1.26.3

require (
	golang.org/x/crypto v0.59.0
	golang.org/x/net v0.62.0
)

require golang.org/x/sys v0.50.0 // indirect
