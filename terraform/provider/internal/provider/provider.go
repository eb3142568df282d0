// Package provider implements the Thinlab provider: resources and data
// sources over the platform's REST API (/api/v1) through sdk/platformapi,
// authenticated with an organization's API token.
package provider

import (
	"context"
	"errors"
	"net/http"
	"os"

	"github.com/hashicorp/terraform-plugin-framework/datasource"
	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/provider"
	"github.com/hashicorp/terraform-plugin-framework/provider/schema"
	"github.com/hashicorp/terraform-plugin-framework/resource"
	"github.com/hashicorp/terraform-plugin-framework/types"

	"github.com/thinlab/thinlab/sdk/platformapi"
)

// Address is the provider's source address in configurations.
const Address = "registry.terraform.io/thinlab/thinlab"

// The environment variables that stand in for the provider's settings.
const (
	EnvURL   = "THINLAB_PLATFORM_URL"
	EnvToken = "THINLAB_TOKEN" //nolint:gosec // G101: a variable's name, not a credential
	EnvOrg   = "THINLAB_ORG"
)

// New returns the provider factory for providerserver.Serve.
func New(version string) func() provider.Provider {
	return func() provider.Provider { return &thinlabProvider{version: version} }
}

type thinlabProvider struct{ version string }

// client is what resources and data sources get from Configure: the API
// client and the organization (slug) they act in.
type client struct {
	api *platformapi.Client
	org string
}

type providerModel struct {
	URL   types.String `tfsdk:"url"`
	Token types.String `tfsdk:"token"`
	Org   types.String `tfsdk:"org"`
}

func (p *thinlabProvider) Metadata(_ context.Context, _ provider.MetadataRequest, resp *provider.MetadataResponse) {
	resp.TypeName = "thinlab"
	resp.Version = p.version
}

func (p *thinlabProvider) Schema(_ context.Context, _ provider.SchemaRequest, resp *provider.SchemaResponse) {
	resp.Schema = schema.Schema{
		Description: "Manages a Thinlab platform organization: enrollment tokens, agents, invitations.",
		Attributes: map[string]schema.Attribute{
			"url": schema.StringAttribute{
				Optional:    true,
				Description: "Base URL of the platform, such as https://thinlab.example.com (or " + EnvURL + ").",
			},
			"token": schema.StringAttribute{
				Optional:    true,
				Sensitive:   true,
				Description: "An API token of the organization (or " + EnvToken + "). Create one in the web UI.",
			},
			"org": schema.StringAttribute{
				Optional:    true,
				Description: "Slug of the organization the token belongs to (or " + EnvOrg + ").",
			},
		},
	}
}

func (p *thinlabProvider) Configure(ctx context.Context, req provider.ConfigureRequest, resp *provider.ConfigureResponse) {
	var cfg providerModel
	resp.Diagnostics.Append(req.Config.Get(ctx, &cfg)...)
	if resp.Diagnostics.HasError() {
		return
	}
	setting := func(v types.String, env, name, fix string) string {
		if v.IsUnknown() {
			resp.Diagnostics.AddAttributeError(path.Root(name), "Unknown "+name,
				"The provider's "+name+" must be known at plan time: set it from a literal, a variable or "+env+".")
			return ""
		}
		s := v.ValueString()
		if s == "" {
			s = os.Getenv(env)
		}
		if s == "" {
			resp.Diagnostics.AddAttributeError(path.Root(name), "Missing "+name,
				"Set the provider's "+name+" or the environment variable "+env+": "+fix)
		}
		return s
	}
	url := setting(cfg.URL, EnvURL, "url", "the platform's base URL, such as https://thinlab.example.com.")
	token := setting(cfg.Token, EnvToken, "token", "an API token created in the organization's settings.")
	org := setting(cfg.Org, EnvOrg, "org", "the organization's slug.")
	if resp.Diagnostics.HasError() {
		return
	}
	c := &client{api: platformapi.NewClient(url, token), org: org}
	resp.DataSourceData = c
	resp.ResourceData = c
}

func (p *thinlabProvider) Resources(context.Context) []func() resource.Resource {
	return []func() resource.Resource{newEnrollmentTokenResource, newAgentResource, newInvitationResource}
}

func (p *thinlabProvider) DataSources(context.Context) []func() datasource.DataSource {
	return []func() datasource.DataSource{newOrganizationDataSource, newAgentsDataSource}
}

// isNotFound reports an API answer 404 (the object is gone).
func isNotFound(err error) bool {
	var apiErr *platformapi.APIError
	return errors.As(err, &apiErr) && apiErr.Status == http.StatusNotFound
}

// configuredClient takes the provider's client from Configure's data;
// nil before the provider is configured (validation runs earlier).
func configuredClient(data any, diags interface{ AddError(string, string) }) *client {
	if data == nil {
		return nil
	}
	c, ok := data.(*client)
	if !ok {
		diags.AddError("Unexpected provider data", "The provider passed data of an unexpected type; this is a bug of the provider.")
		return nil
	}
	return c
}
