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

// thinlab_invitation: a pending invitation of an email address into the
// organization with a role. Once accepted (or expired) it leaves the
// pending list, and so the state; destroy withdraws a pending one. The
// platform cannot change an invitation: every argument replaces it.
type invitationResource struct{ c *client }

func newInvitationResource() resource.Resource { return &invitationResource{} }

type invitationModel struct {
	ID        types.String `tfsdk:"id"`
	Email     types.String `tfsdk:"email"`
	Role      types.String `tfsdk:"role"`
	ExpiresAt types.String `tfsdk:"expires_at"`
	Token     types.String `tfsdk:"token"`
}

func (r *invitationResource) Metadata(_ context.Context, req resource.MetadataRequest, resp *resource.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + "_invitation"
}

func (r *invitationResource) Schema(_ context.Context, _ resource.SchemaRequest, resp *resource.SchemaResponse) {
	keep := []planmodifier.String{stringplanmodifier.UseStateForUnknown()}
	replace := []planmodifier.String{stringplanmodifier.RequiresReplace()}
	resp.Schema = schema.Schema{
		Description: "An invitation of an email address into the organization. The platform mails it when mail is configured.",
		Attributes: map[string]schema.Attribute{
			"id":    schema.StringAttribute{Computed: true, PlanModifiers: keep, Description: "The invitation's ID."},
			"email": schema.StringAttribute{Required: true, PlanModifiers: replace, Description: "Who is invited."},
			"role": schema.StringAttribute{Required: true, PlanModifiers: replace,
				Description: "The role they get: owner, admin, member or viewer."},
			"expires_at": schema.StringAttribute{Computed: true, PlanModifiers: keep, Description: "When it expires, RFC 3339."},
			"token": schema.StringAttribute{Computed: true, Sensitive: true, PlanModifiers: keep,
				Description: "The acceptance token, known only at creation (null after import)."},
		},
	}
}

func (r *invitationResource) Configure(_ context.Context, req resource.ConfigureRequest, resp *resource.ConfigureResponse) {
	r.c = configuredClient(req.ProviderData, &resp.Diagnostics)
}

func (m *invitationModel) fill(inv platformapi.Invitation) {
	m.ID = types.StringValue(inv.ID)
	m.Email = types.StringValue(inv.Email)
	m.Role = types.StringValue(inv.Role)
	m.ExpiresAt = types.StringValue(inv.ExpiresAt.UTC().Format(time.RFC3339))
}

func (r *invitationResource) Create(ctx context.Context, req resource.CreateRequest, resp *resource.CreateResponse) {
	var plan invitationModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &plan)...)
	if resp.Diagnostics.HasError() {
		return
	}
	inv, err := r.c.api.Invite(ctx, r.c.org, platformapi.CreateInvitationRequest{Email: plan.Email.ValueString(), Role: plan.Role.ValueString()})
	if err != nil {
		resp.Diagnostics.AddError("Could not create the invitation", err.Error())
		return
	}
	plan.fill(*inv)
	plan.Token = types.StringValue(inv.Token)
	resp.Diagnostics.Append(resp.State.Set(ctx, &plan)...)
}

func (r *invitationResource) Read(ctx context.Context, req resource.ReadRequest, resp *resource.ReadResponse) {
	var state invitationModel
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	if resp.Diagnostics.HasError() {
		return
	}
	invs, err := r.c.api.Invitations(ctx, r.c.org)
	if err != nil {
		resp.Diagnostics.AddError("Could not read the invitations", err.Error())
		return
	}
	for _, inv := range invs {
		if inv.ID == state.ID.ValueString() {
			state.fill(inv)
			resp.Diagnostics.Append(resp.State.Set(ctx, &state)...)
			return
		}
	}
	resp.State.RemoveResource(ctx) // accepted, expired or withdrawn
}

// Update is never called with a change (every argument replaces).
func (r *invitationResource) Update(ctx context.Context, req resource.UpdateRequest, resp *resource.UpdateResponse) {
	var plan invitationModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &plan)...)
	resp.Diagnostics.Append(resp.State.Set(ctx, &plan)...)
}

func (r *invitationResource) Delete(ctx context.Context, req resource.DeleteRequest, resp *resource.DeleteResponse) {
	var state invitationModel
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	if resp.Diagnostics.HasError() {
		return
	}
	if err := r.c.api.DeleteInvitation(ctx, r.c.org, state.ID.ValueString()); err != nil && !isNotFound(err) {
		resp.Diagnostics.AddError("Could not withdraw the invitation", err.Error())
	}
}

func (r *invitationResource) ImportState(ctx context.Context, req resource.ImportStateRequest, resp *resource.ImportStateResponse) {
	resource.ImportStatePassthroughID(ctx, path.Root("id"), req, resp)
}
