package config

import (
	"net/url"
	"path/filepath"
)

// validateAuth checks retrieval.source.auth (and the older iam/region).
func (s Source) validateAuth(bad func(string, ...any)) {
	switch s.IAM {
	case "", "aws-rds":
	default:
		bad("retrieval.source.iam %q: use aws-rds, or retrieval.source.auth.kind, or leave it empty", s.IAM)
	}
	if s.IAM != "" && s.Auth.Kind != "" {
		bad("retrieval.source.iam and retrieval.source.auth.kind are both set: keep auth.kind (iam: aws-rds is its older spelling)")
	}
	kind := s.AuthKind()
	if kind == AuthPassword {
		return
	}
	switch kind {
	case AuthAWSRDSIAM, AuthGCPCloudSQLIAM, AuthAzureAD:
	default:
		bad("retrieval.source.auth.kind %q: use password, awsRdsIam, gcpCloudSqlIam or azureAd", kind)
		return
	}
	if s.Password != "" || s.PasswordEnv != "" {
		bad("retrieval.source.auth.kind %s replaces the password: remove password/passwordEnv", kind)
	}
	// The token is the password: it must travel only over TLS.
	if s.SSLMode == "disable" || s.SSLMode == "allow" || s.SSLMode == "prefer" {
		bad("retrieval.source.auth.kind %s: sslMode %s would send the token without TLS: use verify-full (with sslRootCert, the cloud's CA bundle) or require", kind, s.SSLMode)
	}
	if s.Username == "" && s.ConnStr == "" {
		bad("retrieval.source.auth.kind %s needs retrieval.source.username: the database role the token logs in as", kind)
	}
	endpoint := func(field, v string) {
		if v == "" {
			return
		}
		if u, err := url.Parse(v); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil {
			bad("retrieval.source.auth.%s %q must be an http(s) URL such as https://host", field, v)
		}
	}
	switch kind {
	case AuthAWSRDSIAM:
		if s.Host == "" || s.Username == "" {
			bad("retrieval.source.auth.kind awsRdsIam needs retrieval.source.host and username (the token is signed for them), not connStr")
		}
		if s.AWSRegion() == "" {
			bad("retrieval.source.auth.aws.region is empty: set the RDS instance's region, e.g. eu-west-1")
		}
		if s.Auth.AWS.Profile != "" && !validToolName(s.Auth.AWS.Profile) {
			bad("retrieval.source.auth.aws.profile %q is not a profile name (letters, digits, '_', '-', '.')", s.Auth.AWS.Profile)
		}
		endpoint("aws.stsEndpoint", s.Auth.AWS.STSEndpoint)
		endpoint("aws.imdsEndpoint", s.Auth.AWS.IMDSEndpoint)
	case AuthGCPCloudSQLIAM:
		if s.Auth.GCP.KeyFile != "" && !filepath.IsAbs(s.Auth.GCP.KeyFile) {
			bad("retrieval.source.auth.gcp.keyFile %q must be an absolute path to a service-account JSON key", s.Auth.GCP.KeyFile)
		}
		endpoint("gcp.metadataEndpoint", s.Auth.GCP.MetadataEndpoint)
	case AuthAzureAD:
		a := s.Auth.Azure
		if a.ClientSecretEnv != "" && !envNameRE.MatchString(a.ClientSecretEnv) {
			bad("retrieval.source.auth.azure.clientSecretEnv %q is not an environment variable name", a.ClientSecretEnv)
		}
		if a.CertificateFile != "" && !filepath.IsAbs(a.CertificateFile) {
			bad("retrieval.source.auth.azure.certificateFile %q must be an absolute path to a PEM file with the certificate and its key", a.CertificateFile)
		}
		if a.ClientSecretEnv != "" && a.CertificateFile != "" {
			bad("retrieval.source.auth.azure: clientSecretEnv and certificateFile are both set: keep one")
		}
		if (a.ClientSecretEnv != "" || a.CertificateFile != "") && (a.TenantID == "" || a.ClientID == "") {
			bad("retrieval.source.auth.azure: a client secret or certificate needs tenantID and clientID (the app registration)")
		}
		if a.TenantID != "" && !validToolName(a.TenantID) {
			bad("retrieval.source.auth.azure.tenantID %q is not a tenant id or domain", a.TenantID)
		}
		endpoint("azure.authorityHost", a.AuthorityHost)
		endpoint("azure.imdsEndpoint", a.IMDSEndpoint)
	}
}
