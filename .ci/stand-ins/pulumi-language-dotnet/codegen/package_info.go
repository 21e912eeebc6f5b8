// Package codegen stands in for pulumi-dotnet's codegen package: only the struct docker-build writes into its
// schema.
package codegen

// CSharpPackageInfo is the schema's `language.csharp` section, with the JSON names pulumi-dotnet gives it.
type CSharpPackageInfo struct {
	PackageReferences    map[string]string `json:"packageReferences,omitempty"`
	RespectSchemaVersion bool              `json:"respectSchemaVersion,omitempty"`
}
