// The `docker` resource plugin: the bridged provider of provider.go with the schema that pulumi-tfgen-docker
// writes beside this file (schema.json, not committed): `VERSION=5.2.0 go generate ./cmd/pulumi-resource-docker`
// before `go build`, as .ci/toolchain.py does.
//
//go:generate go run -ldflags=-X=main.version=${VERSION} ../pulumi-tfgen-docker schema --out .
package main

import (
	_ "embed"

	"github.com/pulumi/pulumi-terraform-bridge/v3/pkg/tfbridge"

	dockerprovider "github.com/terraform-providers/terraform-provider-docker/pulumi"
)

//go:embed schema.json
var schema []byte

var version = "0.0.0" // set with -ldflags -X main.version=...

func main() {
	tfbridge.Main("docker", version, dockerprovider.Provider(version), schema)
}
