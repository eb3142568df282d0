package cloudauth

import (
	"bufio"
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/thinlab/thinlab/agent/retrieval/sigv4"
)

// awsCredentials are the cached credentials, or the first the standard
// AWS chain yields, in the SDKs' order: the environment's keys, web
// identity from the environment, the shared files' profile, ECS
// container credentials, EC2 instance metadata.
func (a *Authenticator) awsCredentials(ctx context.Context) (sigv4.Credentials, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.aws.valid(a.now()) {
		return a.aws.v, nil
	}
	c, err := a.resolveAWS(ctx)
	if err != nil {
		return sigv4.Credentials{}, err
	}
	if !c.expires.IsZero() {
		a.log.Info("AWS credentials obtained for the retrieval source", "from", c.source, "expires", c.expires.UTC().Format(time.RFC3339))
	}
	a.aws = c
	return c.v, nil
}

type awsCreds = cached[sigv4.Credentials]

func (a *Authenticator) resolveAWS(ctx context.Context) (awsCreds, error) {
	if id, secret := getenv("AWS_ACCESS_KEY_ID"), getenv("AWS_SECRET_ACCESS_KEY"); id != "" && secret != "" {
		return awsCreds{v: sigv4.Credentials{AccessKeyID: id, SecretAccessKey: secret, SessionToken: getenv("AWS_SESSION_TOKEN")}, source: "environment"}, nil
	}
	if f := getenv("AWS_WEB_IDENTITY_TOKEN_FILE"); f != "" {
		role := getenv("AWS_ROLE_ARN")
		if role == "" {
			return awsCreds{}, errors.New("AWS_WEB_IDENTITY_TOKEN_FILE is set but AWS_ROLE_ARN is not: set the role to assume")
		}
		return a.assumeRoleWithWebIdentity(ctx, role, f, getenv("AWS_ROLE_SESSION_NAME"))
	}
	c, found, err := a.sharedProfile(ctx)
	if err != nil || found {
		return c, err
	}
	if getenv("AWS_CONTAINER_CREDENTIALS_FULL_URI") != "" || getenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") != "" {
		return a.containerCredentials(ctx)
	}
	if strings.EqualFold(getenv("AWS_EC2_METADATA_DISABLED"), "true") {
		return awsCreds{}, errors.New(noAWSCredentials + " (EC2 instance metadata is disabled by AWS_EC2_METADATA_DISABLED)")
	}
	c, err = a.instanceCredentials(ctx)
	if err != nil {
		return awsCreds{}, fmt.Errorf("%s; EC2 instance metadata: %w", noAWSCredentials, err)
	}
	return c, nil
}

//nolint:gosec // G101: an error message naming variables, not a credential
const noAWSCredentials = "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN, or a profile in the shared credentials file (AWS_SHARED_CREDENTIALS_FILE, AWS_PROFILE), or run the agent on ECS or EC2 with a role"

// sharedProfile reads the profile (auth.aws.profile, AWS_PROFILE, or
// default) from the shared config and credentials files; the
// credentials file wins where both set a key. found is false when the
// default profile is in neither file; a named profile that is missing is
// an error.
func (a *Authenticator) sharedProfile(ctx context.Context) (awsCreds, bool, error) {
	name := a.src.Auth.AWS.Profile
	named := true
	if name == "" {
		name = getenv("AWS_PROFILE")
	}
	if name == "" {
		name, named = "default", false
	}
	home, _ := os.UserHomeDir()
	credFile := getenv("AWS_SHARED_CREDENTIALS_FILE")
	if credFile == "" && home != "" {
		credFile = filepath.Join(home, ".aws", "credentials")
	}
	cfgFile := getenv("AWS_CONFIG_FILE")
	if cfgFile == "" && home != "" {
		cfgFile = filepath.Join(home, ".aws", "config")
	}
	prof := map[string]string{}
	found := false
	// The config file names profiles "profile NAME" (but "default").
	cfgSection := "profile " + name
	if name == "default" {
		cfgSection = "default"
	}
	for _, f := range []struct{ path, section string }{{cfgFile, cfgSection}, {credFile, name}} {
		if f.path == "" {
			continue
		}
		kv, ok, err := readINISection(f.path, f.section)
		if err != nil {
			return awsCreds{}, false, err
		}
		if ok {
			found = true
			maps.Copy(prof, kv)
		}
	}
	if !found {
		if named {
			return awsCreds{}, false, fmt.Errorf("AWS profile %q is in neither %s nor %s: fix retrieval.source.auth.aws.profile or AWS_PROFILE", name, credFile, cfgFile)
		}
		return awsCreds{}, false, nil
	}
	src := "profile " + name
	switch {
	case prof["aws_access_key_id"] != "" && prof["aws_secret_access_key"] != "":
		return awsCreds{v: sigv4.Credentials{AccessKeyID: prof["aws_access_key_id"], SecretAccessKey: prof["aws_secret_access_key"], SessionToken: prof["aws_session_token"]}, source: src}, true, nil
	case prof["role_arn"] != "" && prof["web_identity_token_file"] != "":
		c, err := a.assumeRoleWithWebIdentity(ctx, prof["role_arn"], prof["web_identity_token_file"], prof["role_session_name"])
		return c, true, err
	case !named:
		// A default profile with other settings only (region, output).
		return awsCreds{}, false, nil
	}
	return awsCreds{}, false, fmt.Errorf("AWS profile %q has no aws_access_key_id/aws_secret_access_key nor role_arn with web_identity_token_file (source_profile, credential_process and SSO profiles are not supported): give the profile static or web identity credentials", name)
}

// readINISection returns the key/value pairs of [section] of an AWS
// shared file; a missing file is no section.
func readINISection(path, section string) (map[string]string, bool, error) {
	f, err := os.Open(path) //nolint:gosec // G304: the AWS shared file the admin names (or root's default)
	if errors.Is(err, os.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("read the AWS shared file: %w", err)
	}
	defer func() { _ = f.Close() }()
	out := map[string]string{}
	in, found := false, false
	sc := bufio.NewScanner(io.LimitReader(f, maxResponse))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		if strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]") {
			name := strings.Join(strings.Fields(line[1:len(line)-1]), " ")
			in = name == section
			found = found || in
			continue
		}
		if !in {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		out[strings.ToLower(strings.TrimSpace(k))] = strings.TrimSpace(v)
	}
	if err := sc.Err(); err != nil {
		return nil, false, fmt.Errorf("read %s: %w", path, err)
	}
	return out, found, nil
}

// stsEndpoint is where AssumeRoleWithWebIdentity goes.
func (a *Authenticator) stsEndpoint() string {
	if e := a.src.Auth.AWS.STSEndpoint; e != "" {
		return e
	}
	if e := getenv("AWS_ENDPOINT_URL_STS"); e != "" {
		return e
	}
	return "https://sts." + a.src.AWSRegion() + ".amazonaws.com/"
}

// assumeRoleWithWebIdentity exchanges the token in tokenFile (an OIDC
// token of EKS, GitHub, ...) for temporary credentials of role. The call
// is unsigned: the token is the proof.
func (a *Authenticator) assumeRoleWithWebIdentity(ctx context.Context, role, tokenFile, session string) (awsCreds, error) {
	tok, err := os.ReadFile(tokenFile) //nolint:gosec // G304: the token file the environment names
	if err != nil {
		return awsCreds{}, fmt.Errorf("web identity token (AWS_WEB_IDENTITY_TOKEN_FILE): %w", err)
	}
	if session == "" {
		session = "thinlab-agent-" + strconv.FormatInt(a.now().Unix(), 10)
	}
	u, err := checkCredentialURL(a.stsEndpoint())
	if err != nil {
		return awsCreds{}, fmt.Errorf("STS endpoint (retrieval.source.auth.aws.stsEndpoint, AWS_ENDPOINT_URL_STS): %w", err)
	}
	form := url.Values{
		"Action":           {"AssumeRoleWithWebIdentity"},
		"Version":          {"2011-06-15"},
		"RoleArn":          {role},
		"RoleSessionName":  {session},
		"WebIdentityToken": {strings.TrimSpace(string(tok))},
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), strings.NewReader(form.Encode()))
	if err != nil {
		return awsCreds{}, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/xml")
	resp, err := a.web.Do(req)
	if err != nil {
		return awsCreds{}, fmt.Errorf("STS AssumeRoleWithWebIdentity: %w", err)
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return awsCreds{}, httpError("STS AssumeRoleWithWebIdentity for "+role, resp)
	}
	var out struct {
		Result struct {
			Credentials struct {
				AccessKeyID     string    `xml:"AccessKeyId"`
				SecretAccessKey string    `xml:"SecretAccessKey"`
				SessionToken    string    `xml:"SessionToken"`
				Expiration      time.Time `xml:"Expiration"`
			} `xml:"Credentials"`
		} `xml:"AssumeRoleWithWebIdentityResult"`
	}
	if err := xml.NewDecoder(io.LimitReader(resp.Body, maxResponse)).Decode(&out); err != nil {
		return awsCreds{}, fmt.Errorf("STS AssumeRoleWithWebIdentity: the answer is not the expected XML: %w", err)
	}
	c := out.Result.Credentials
	if c.AccessKeyID == "" || c.SecretAccessKey == "" || c.Expiration.IsZero() {
		return awsCreds{}, errors.New("STS AssumeRoleWithWebIdentity: the answer has no credentials")
	}
	return awsCreds{v: sigv4.Credentials{AccessKeyID: c.AccessKeyID, SecretAccessKey: c.SecretAccessKey, SessionToken: c.SessionToken}, expires: c.Expiration, source: "web identity " + role}, nil
}

// metadataCreds is the JSON of ECS's and EC2's credential endpoints.
type metadataCreds struct {
	Code            string
	AccessKeyID     string `json:"AccessKeyId"`
	SecretAccessKey string
	Token           string
	Expiration      time.Time
}

func (m metadataCreds) creds(source string) (awsCreds, error) {
	if m.Code != "" && m.Code != "Success" {
		return awsCreds{}, fmt.Errorf("%s: code %s", source, m.Code)
	}
	if m.AccessKeyID == "" || m.SecretAccessKey == "" {
		return awsCreds{}, fmt.Errorf("%s: the answer has no credentials", source)
	}
	return awsCreds{v: sigv4.Credentials{AccessKeyID: m.AccessKeyID, SecretAccessKey: m.SecretAccessKey, SessionToken: m.Token}, expires: m.Expiration, source: source}, nil
}

// containerCredentials asks the ECS (or EKS pod identity) agent.
func (a *Authenticator) containerCredentials(ctx context.Context) (awsCreds, error) {
	raw := getenv("AWS_CONTAINER_CREDENTIALS_FULL_URI")
	if rel := getenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"); rel != "" {
		raw = "http://169.254.170.2" + rel
	}
	u, err := checkCredentialURL(raw)
	if err != nil {
		return awsCreds{}, fmt.Errorf("container credentials (AWS_CONTAINER_CREDENTIALS_FULL_URI): %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return awsCreds{}, err
	}
	auth := getenv("AWS_CONTAINER_AUTHORIZATION_TOKEN")
	if f := getenv("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"); f != "" {
		b, err := os.ReadFile(f) //nolint:gosec // G304: the token file the environment names
		if err != nil {
			return awsCreds{}, fmt.Errorf("container credentials token (AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE): %w", err)
		}
		auth = strings.TrimSpace(string(b))
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	var m metadataCreds
	if _, err := doJSON(a.meta, req, "container credentials", &m); err != nil {
		return awsCreds{}, err
	}
	return m.creds("container credentials")
}

// imdsEndpoint is the EC2 instance metadata service's base URL.
func (a *Authenticator) imdsEndpoint() string {
	if e := a.src.Auth.AWS.IMDSEndpoint; e != "" {
		return strings.TrimSuffix(e, "/")
	}
	if e := getenv("AWS_EC2_METADATA_SERVICE_ENDPOINT"); e != "" {
		return strings.TrimSuffix(e, "/")
	}
	return "http://169.254.169.254"
}

// instanceCredentials reads the instance role's credentials from IMDSv2:
// a session token (PUT), the role's name, then its credentials.
func (a *Authenticator) instanceCredentials(ctx context.Context) (awsCreds, error) {
	base := a.imdsEndpoint()
	if _, err := checkCredentialURL(base); err != nil {
		return awsCreds{}, fmt.Errorf("retrieval.source.auth.aws.imdsEndpoint: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, base+"/latest/api/token", nil)
	if err != nil {
		return awsCreds{}, err
	}
	req.Header.Set("X-aws-ec2-metadata-token-ttl-seconds", "21600")
	token, err := a.metaText(req, "IMDSv2 session token")
	if err != nil {
		return awsCreds{}, err
	}
	get := func(path string) (*http.Request, error) {
		r, err := http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
		if err == nil {
			r.Header.Set("X-aws-ec2-metadata-token", token)
		}
		return r, err
	}
	req, err = get("/latest/meta-data/iam/security-credentials/")
	if err != nil {
		return awsCreds{}, err
	}
	roles, err := a.metaText(req, "the instance's role")
	if err != nil {
		return awsCreds{}, err
	}
	role, _, _ := strings.Cut(strings.TrimSpace(roles), "\n")
	if role == "" || strings.ContainsAny(role, "/?#") {
		return awsCreds{}, errors.New("the instance has no IAM role: attach an instance profile")
	}
	req, err = get("/latest/meta-data/iam/security-credentials/" + url.PathEscape(role))
	if err != nil {
		return awsCreds{}, err
	}
	var m metadataCreds
	if _, err := doJSON(a.meta, req, "EC2 instance credentials", &m); err != nil {
		return awsCreds{}, err
	}
	return m.creds("EC2 instance role " + role)
}

// metaText is a metadata endpoint's plain-text answer.
func (a *Authenticator) metaText(req *http.Request, what string) (string, error) {
	resp, err := a.meta.Do(req)
	if err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return "", httpError(what, resp)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
	if err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	return strings.TrimSpace(string(b)), nil
}
