// Package dockerprovider bridges the Terraform Docker provider (kreuzwerker/terraform-provider-docker) to Pulumi,
// the way pulumi-docker does, for the engine lane: the Go module proxy serves neither pulumi-docker's provider
// module nor the upstream release pulumi-docker pins, only a later upstream commit (see .ci/toolchain.py).
//
// This module's path sits under the upstream module's own path (github.com/terraform-providers/...), so the Go
// import rule for internal/ (checked on import paths) lets it import upstream's internal/provider without any
// patch: pulumi-docker's own patch 0001 only adds a shim package exposing internal/provider.New, and its old
// provider/shim module did exactly what this one does.
//
// What is the same as pulumi-docker: the resource and data source tokens and property names its Python SDK uses
// (docker:index/container:Container, `command` and `networksAdvanced` not pluralised, ...), the `host` default. What differs: no native docker:index/image:Image
// (pulumi-docker's hybrid provider serves that one itself), no bridge-metadata.json (auto-aliasing history),
// upstream not patched (patch 0002 only touches registry pushes), and the schema is generated here by tfgen.
package dockerprovider

import (
	"context"
	"runtime"

	"github.com/pulumi/pulumi-terraform-bridge/v3/pkg/tfbridge"
	"github.com/pulumi/pulumi-terraform-bridge/v3/pkg/tfbridge/tokens"
	shimv2 "github.com/pulumi/pulumi-terraform-bridge/v3/pkg/tfshim/sdk-v2"

	"github.com/terraform-providers/terraform-provider-docker/internal/provider"
)

func resource(name string) *tfbridge.ResourceInfo {
	return &tfbridge.ResourceInfo{Tok: tfbridge.MakeResource("docker", "index", name)}
}

func dataSource(name string) *tfbridge.DataSourceInfo {
	return &tfbridge.DataSourceInfo{Tok: tfbridge.MakeDataSource("docker", "index", name)}
}

// Provider is the bridge's description of the upstream SDKv2 provider (the part pulumi-docker bridges; upstream's
// plugin-framework half is not bridged by pulumi-docker either).
func Provider(version string) tfbridge.ProviderInfo {
	container := resource("Container")
	container.DeleteBeforeReplace = true
	container.Fields = map[string]*tfbridge.SchemaInfo{
		"command":           {Name: "command"},          // one command, not several
		"networks_advanced": {Name: "networksAdvanced"}, // not pluralised
	}
	remoteImage := resource("RemoteImage")
	remoteImage.Fields = map[string]*tfbridge.SchemaInfo{"name": {Name: "name"}}

	info := tfbridge.ProviderInfo{
		P:         shimv2.NewProvider(provider.New(version)()),
		Name:      "docker",
		Version:   version,
		GitHubOrg: "kreuzwerker",
		Config: map[string]*tfbridge.SchemaInfo{
			"host": {Default: &tfbridge.DefaultInfo{
				EnvVars: []string{"DOCKER_HOST"},
				ComputeDefault: func(context.Context, tfbridge.ComputeDefaultOptions) (interface{}, error) {
					if runtime.GOOS == "windows" {
						return "npipe:////./pipe/docker_engine", nil
					}
					return "unix:///var/run/docker.sock", nil
				},
			}},
			"registry_auth": {Name: "registryAuth", MaxItemsOne: tfbridge.False()},
		},
		Resources: map[string]*tfbridge.ResourceInfo{
			"docker_config":         resource("ServiceConfig"),
			"docker_container":      container,
			"docker_image":          remoteImage,
			"docker_network":        resource("Network"),
			"docker_secret":         resource("Secret"),
			"docker_service":        resource("Service"),
			"docker_volume":         resource("Volume"),
			"docker_registry_image": resource("RegistryImage"),
			"docker_plugin":         resource("Plugin"),
			"docker_tag":            resource("Tag"),
		},
		DataSources: map[string]*tfbridge.DataSourceInfo{
			"docker_network":        dataSource("getNetwork"),
			"docker_registry_image": dataSource("getRegistryImage"),
			"docker_plugin":         dataSource("getPlugin"),
			"docker_image":          dataSource("getRemoteImage"),
			"docker_logs":           dataSource("getLogs"),
		},
	}
	// Whatever upstream added after pulumi-docker's list gets the same standard token in module index.
	info.MustComputeTokens(tokens.SingleModule("docker_", "index", tokens.MakeStandard("docker")))
	return info
}
