// Package java stands in for pulumi-java's codegen package: only the struct docker-build writes into its schema.
package java

// PackageInfo is the schema's `language.java` section, with the JSON names pulumi-java gives it.
type PackageInfo struct {
	BasePackage                     string            `json:"basePackage"`
	BuildFiles                      string            `json:"buildFiles"`
	Dependencies                    map[string]string `json:"dependencies,omitempty"`
	GradleNexusPublishPluginVersion string            `json:"gradleNexusPublishPluginVersion"`
	GradleTest                      string            `json:"gradleTest"`
}
