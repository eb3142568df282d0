package provider

import (
	"context"
	"time"

	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/resource"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/planmodifier"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/stringplanmodifier"
	"github.com/hashicorp/terraform-plugin-framework/types"

	"github.com/thinlab/thinlab/sdk/platformapi"
)

// thinlab_agent: an agent that enrolled itself (with an enrollment token)
// taken under management. Agents cannot be created through the API, so
// "create" adopts the agent named by agent_id; name renames it; destroy
// revokes it (its tunnel is closed and it cannot reconnect).
type agentResource struct{ c *client }

func newAgentResource() resource.Resource { return &agentResource{} }

type agentModel struct {
	ID         types.String `tfsdk:"id"`
	AgentID    types.String `tfsdk:"agent_id"`
	Name       types.String `tfsdk:"name"`
	Version    types.String `tfsdk:"version"`
	State      types.String `tfsdk:"state"`
	EnrolledAt types.String `tfsdk:"enrolled_at"`
}

func (r *agentResource) Metadata(_ context.Context, req resource.MetadataRequest, resp *resource.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + "_agent"
}

func (r *agentResource) Schema(_ context.Context, _ resource.SchemaRequest, resp *resource.SchemaResponse) {
	keep := []planmodifier.String{stringplanmodifier.UseStateForUnknown()}
	resp.Schema = schema.Schema{
		Description: "An enrolled agent under management: renames it, revokes it on destroy. Agents enroll themselves with an enrollment token; this resource adopts one by ID.",
		Attributes: map[string]schema.Attribute{
			"id": schema.StringAttribute{Computed: true, PlanModifiers: keep, Description: "The agent's ID (same as agent_id)."},
			"agent_id": schema.StringAttribute{Required: true,
				PlanModifiers: []planmodifier.String{stringplanmodifier.RequiresReplace()},
				Description:   "ID of the enrolled agent to manage (see the thinlab_agents data source or the web UI)."},
			"name": schema.StringAttribute{Optional: true, Computed: true, PlanModifiers: keep,
				Description: "The agent's display name; set to rename it. Unset: the name it enrolled with."},
			"version":     schema.StringAttribute{Computed: true, Description: "The agent's version, as last reported."},
			"state":       schema.StringAttribute{Computed: true, Description: "Connection state: connected, stale, disconnected, never_connected."},
			"enrolled_at": schema.StringAttribute{Computed: true, PlanModifiers: keep, Description: "When it enrolled, RFC 3339."},
		},
	}
}

func (r *agentResource) Configure(_ context.Context, req resource.ConfigureRequest, resp *resource.ConfigureResponse) {
	r.c = configuredClient(req.ProviderData, &resp.Diagnostics)
}

func (m *agentModel) fill(a *platformapi.Agent) {
	m.ID = types.StringValue(a.ID)
	m.AgentID = types.StringValue(a.ID)
	m.Name = types.StringValue(a.Name)
	m.Version = types.StringValue(a.Version)
	m.State = types.StringValue(a.Connection.State)
	m.EnrolledAt = types.StringValue(a.EnrolledAt.UTC().Format(time.RFC3339))
}

// apply renames the agent when the plan names it differently.
func (r *agentResource) apply(ctx context.Context, plan *agentModel) (*platformapi.Agent, error) {
	a, err := r.c.api.Agent(ctx, r.c.org, plan.AgentID.ValueString())
	if err != nil {
		return nil, err
	}
	if !plan.Name.IsUnknown() && !plan.Name.IsNull() && plan.Name.ValueString() != a.Name {
		return r.c.api.RenameAgent(ctx, r.c.org, a.ID, plan.Name.ValueString())
	}
	return a, nil
}

func (r *agentResource) Create(ctx context.Context, req resource.CreateRequest, resp *resource.CreateResponse) {
	var plan agentModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &plan)...)
	if resp.Diagnostics.HasError() {
		return
	}
	a, err := r.apply(ctx, &plan)
	if err == nil && a.RevokedAt != nil {
		resp.Diagnostics.AddAttributeError(path.Root("agent_id"), "Agent revoked",
			"The agent "+a.ID+" is revoked; enroll it again (with an enrollment token) and use its new ID.")
		return
	}
	if err != nil {
		resp.Diagnostics.AddAttributeError(path.Root("agent_id"), "Could not adopt the agent", err.Error())
		return
	}
	plan.fill(a)
	resp.Diagnostics.Append(resp.State.Set(ctx, &plan)...)
}

func (r *agentResource) Read(ctx context.Context, req resource.ReadRequest, resp *resource.ReadResponse) {
	var state agentModel
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	if resp.Diagnostics.HasError() {
		return
	}
	a, err := r.c.api.Agent(ctx, r.c.org, state.ID.ValueString())
	if isNotFound(err) || (err == nil && a.RevokedAt != nil) {
		resp.State.RemoveResource(ctx)
		return
	}
	if err != nil {
		resp.Diagnostics.AddError("Could not read the agent", err.Error())
		return
	}
	state.fill(a)
	resp.Diagnostics.Append(resp.State.Set(ctx, &state)...)
}

func (r *agentResource) Update(ctx context.Context, req resource.UpdateRequest, resp *resource.UpdateResponse) {
	var plan agentModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &plan)...)
	if resp.Diagnostics.HasError() {
		return
	}
	a, err := r.apply(ctx, &plan)
	if err != nil {
		resp.Diagnostics.AddError("Could not rename the agent", err.Error())
		return
	}
	plan.fill(a)
	resp.Diagnostics.Append(resp.State.Set(ctx, &plan)...)
}

func (r *agentResource) Delete(ctx context.Context, req resource.DeleteRequest, resp *resource.DeleteResponse) {
	var state agentModel
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	if resp.Diagnostics.HasError() {
		return
	}
	if err := r.c.api.RevokeAgent(ctx, r.c.org, state.ID.ValueString()); err != nil && !isNotFound(err) {
		resp.Diagnostics.AddError("Could not revoke the agent", err.Error())
	}
}

// ImportState takes the agent's ID; Read fills the rest.
func (r *agentResource) ImportState(ctx context.Context, req resource.ImportStateRequest, resp *resource.ImportStateResponse) {
	resp.Diagnostics.Append(resp.State.SetAttribute(ctx, path.Root("id"), req.ID)...)
	resp.Diagnostics.Append(resp.State.SetAttribute(ctx, path.Root("agent_id"), req.ID)...)
}
