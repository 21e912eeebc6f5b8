// Writes the Pulumi schema of the bridged provider: `pulumi-tfgen-docker schema --out DIR` (see provider.go).
package main

import (
	"github.com/pulumi/pulumi-terraform-bridge/v3/pkg/tfgen"

	dockerprovider "github.com/terraform-providers/terraform-provider-docker/pulumi"
)

var version = "0.0.0" // set with -ldflags -X main.version=...

func main() {
	tfgen.Main("docker", version, dockerprovider.Provider(version))
}
