package provider

import (
	"context"

	"github.com/hashicorp/terraform-plugin-framework/datasource"
	"github.com/hashicorp/terraform-plugin-framework/datasource/schema"
	"github.com/hashicorp/terraform-plugin-framework/types"
)

// thinlab_organization: the organization the provider acts in.
type organizationDataSource struct{ c *client }

func newOrganizationDataSource() datasource.DataSource { return &organizationDataSource{} }

type organizationModel struct {
	ID   types.String `tfsdk:"id"`
	Slug types.String `tfsdk:"slug"`
	Name types.String `tfsdk:"name"`
}

func (d *organizationDataSource) Metadata(_ context.Context, req datasource.MetadataRequest, resp *datasource.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + "_organization"
}

func (d *organizationDataSource) Schema(_ context.Context, _ datasource.SchemaRequest, resp *datasource.SchemaResponse) {
	resp.Schema = schema.Schema{
		Description: "The organization the provider acts in (its org setting).",
		Attributes: map[string]schema.Attribute{
			"id":   schema.StringAttribute{Computed: true, Description: "The organization's ID."},
			"slug": schema.StringAttribute{Computed: true, Description: "Its slug, as in URLs."},
			"name": schema.StringAttribute{Computed: true, Description: "Its display name."},
		},
	}
}

func (d *organizationDataSource) Configure(_ context.Context, req datasource.ConfigureRequest, resp *datasource.ConfigureResponse) {
	d.c = configuredClient(req.ProviderData, &resp.Diagnostics)
}

func (d *organizationDataSource) Read(ctx context.Context, _ datasource.ReadRequest, resp *datasource.ReadResponse) {
	orgs, err := d.c.api.Orgs(ctx)
	if err != nil {
		resp.Diagnostics.AddError("Could not read the organization", err.Error())
		return
	}
	for _, o := range orgs {
		if o.Slug == d.c.org || o.ID == d.c.org {
			m := organizationModel{ID: types.StringValue(o.ID), Slug: types.StringValue(o.Slug), Name: types.StringValue(o.Name)}
			resp.Diagnostics.Append(resp.State.Set(ctx, &m)...)
			return
		}
	}
	resp.Diagnostics.AddError("Organization not found",
		"The API token does not belong to the organization "+d.c.org+": set the provider's org to the slug of the token's organization.")
}

// thinlab_agents: the organization's agents.
type agentsDataSource struct{ c *client }

func newAgentsDataSource() datasource.DataSource { return &agentsDataSource{} }

type agentsModel struct {
	Agents []agentItem `tfsdk:"agents"`
}

type agentItem struct {
	ID      types.String `tfsdk:"id"`
	Name    types.String `tfsdk:"name"`
	Version types.String `tfsdk:"version"`
	State   types.String `tfsdk:"state"`
	Revoked types.Bool   `tfsdk:"revoked"`
}

func (d *agentsDataSource) Metadata(_ context.Context, req datasource.MetadataRequest, resp *datasource.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + "_agents"
}

func (d *agentsDataSource) Schema(_ context.Context, _ datasource.SchemaRequest, resp *datasource.SchemaResponse) {
	resp.Schema = schema.Schema{
		Description: "The organization's enrolled agents.",
		Attributes: map[string]schema.Attribute{
			"agents": schema.ListNestedAttribute{
				Computed: true,
				NestedObject: schema.NestedAttributeObject{Attributes: map[string]schema.Attribute{
					"id":      schema.StringAttribute{Computed: true, Description: "The agent's ID."},
					"name":    schema.StringAttribute{Computed: true, Description: "Its display name."},
					"version": schema.StringAttribute{Computed: true, Description: "Its version, as last reported."},
					"state":   schema.StringAttribute{Computed: true, Description: "Connection state (revoked for a revoked agent)."},
					"revoked": schema.BoolAttribute{Computed: true, Description: "Whether it is revoked."},
				}},
			},
		},
	}
}

func (d *agentsDataSource) Configure(_ context.Context, req datasource.ConfigureRequest, resp *datasource.ConfigureResponse) {
	d.c = configuredClient(req.ProviderData, &resp.Diagnostics)
}

func (d *agentsDataSource) Read(ctx context.Context, _ datasource.ReadRequest, resp *datasource.ReadResponse) {
	agents, err := d.c.api.Agents(ctx, d.c.org)
	if err != nil {
		resp.Diagnostics.AddError("Could not list the agents", err.Error())
		return
	}
	m := agentsModel{Agents: []agentItem{}}
	for _, a := range agents {
		m.Agents = append(m.Agents, agentItem{
			ID: types.StringValue(a.ID), Name: types.StringValue(a.Name), Version: types.StringValue(a.Version),
			State: types.StringValue(a.Connection.State), Revoked: types.BoolValue(a.RevokedAt != nil),
		})
	}
	resp.Diagnostics.Append(resp.State.Set(ctx, &m)...)
}
