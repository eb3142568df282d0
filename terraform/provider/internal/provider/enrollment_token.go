package provider

import (
	"context"
	"time"

	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/resource"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/boolplanmodifier"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/planmodifier"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/stringplanmodifier"
	"github.com/hashicorp/terraform-plugin-framework/types"

	"github.com/thinlab/thinlab/sdk/platformapi"
)

// thinlab_enrollment_token: a token that enrolls agents into the
// organization. The secret is known only at creation (the platform keeps
// a hash), so it lives in the state, marked sensitive; every argument
// replaces the token, since the platform has no update.
type enrollmentTokenResource struct{ c *client }

func newEnrollmentTokenResource() resource.Resource { return &enrollmentTokenResource{} }

type enrollmentTokenModel struct {
	ID        types.String `tfsdk:"id"`
	Name      types.String `tfsdk:"name"`
	SingleUse types.Bool   `tfsdk:"single_use"`
	ExpiresAt types.String `tfsdk:"expires_at"`
	Prefix    types.String `tfsdk:"prefix"`
	Secret    types.String `tfsdk:"secret"`
	Command   types.String `tfsdk:"command"`
	Uses      types.Int64  `tfsdk:"uses"`
	Usable    types.Bool   `tfsdk:"usable"`
}

func (r *enrollmentTokenResource) Metadata(_ context.Context, req resource.MetadataRequest, resp *resource.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + "_enrollment_token"
}

func (r *enrollmentTokenResource) Schema(_ context.Context, _ resource.SchemaRequest, resp *resource.SchemaResponse) {
	keep := []planmodifier.String{stringplanmodifier.UseStateForUnknown()}
	replace := []planmodifier.String{stringplanmodifier.RequiresReplace()}
	resp.Schema = schema.Schema{
		Description: "An enrollment token: agents started with its secret join the organization. Destroying it revokes it (enrolled agents stay).",
		Attributes: map[string]schema.Attribute{
			"id": schema.StringAttribute{Computed: true, PlanModifiers: keep, Description: "The token's ID."},
			"name": schema.StringAttribute{Optional: true, PlanModifiers: replace,
				Description: "A label shown in the web UI. Changing it replaces the token."},
			"single_use": schema.BoolAttribute{Optional: true, Computed: true,
				PlanModifiers: []planmodifier.Bool{boolplanmodifier.RequiresReplace(), boolplanmodifier.UseStateForUnknown()},
				Description:   "Whether the token enrolls one agent only (default false). Changing it replaces the token."},
			"expires_at": schema.StringAttribute{Optional: true, Computed: true,
				PlanModifiers: []planmodifier.String{stringplanmodifier.RequiresReplace(), stringplanmodifier.UseStateForUnknown()},
				Description:   "Expiry, RFC 3339 (such as 2030-01-02T15:04:05Z); the platform's default when unset. Changing it replaces the token."},
			"prefix": schema.StringAttribute{Computed: true, PlanModifiers: keep, Description: "The secret's first characters, to recognize it."},
			"secret": schema.StringAttribute{Computed: true, Sensitive: true, PlanModifiers: keep,
				Description: "The secret, known only at creation (null after import)."},
			"command": schema.StringAttribute{Computed: true, Sensitive: true, PlanModifiers: keep,
				Description: "The command that enrolls an agent with the secret (null after import)."},
			"uses":   schema.Int64Attribute{Computed: true, Description: "How many agents enrolled with it."},
			"usable": schema.BoolAttribute{Computed: true, Description: "Whether it can still enroll an agent (not expired, revoked or used up)."},
		},
	}
}

func (r *enrollmentTokenResource) Configure(_ context.Context, req resource.ConfigureRequest, resp *resource.ConfigureResponse) {
	r.c = configuredClient(req.ProviderData, &resp.Diagnostics)
}

func (r *enrollmentTokenResource) Create(ctx context.Context, req resource.CreateRequest, resp *resource.CreateResponse) {
	var plan enrollmentTokenModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &plan)...)
	if resp.Diagnostics.HasError() {
		return
	}
	in := platformapi.CreateEnrollmentTokenRequest{Name: plan.Name.ValueString(), SingleUse: plan.SingleUse.ValueBool()}
	if s := plan.ExpiresAt.ValueString(); s != "" {
		t, err := time.Parse(time.RFC3339, s)
		if err != nil {
			resp.Diagnostics.AddAttributeError(path.Root("expires_at"), "Invalid expires_at",
				"expires_at must be an RFC 3339 time, such as 2030-01-02T15:04:05Z: "+err.Error())
			return
		}
		in.ExpiresAt = &t
	}
	created, err := r.c.api.CreateEnrollmentToken(ctx, r.c.org, in)
	if err != nil {
		resp.Diagnostics.AddError("Could not create the enrollment token", err.Error())
		return
	}
	plan.Secret = types.StringValue(created.Secret)
	plan.Command = types.StringValue(created.Command)
	plan.fill(created.EnrollmentToken, plan.ExpiresAt)
	resp.Diagnostics.Append(resp.State.Set(ctx, &plan)...)
}

// fill copies what the platform reports. expires_at keeps the
// configuration's spelling when it names the same instant, so that a
// time written with an offset does not show a change on every plan.
func (m *enrollmentTokenModel) fill(t platformapi.EnrollmentToken, configured types.String) {
	m.ID = types.StringValue(t.ID)
	if t.Name != "" || !m.Name.IsNull() {
		m.Name = types.StringValue(t.Name)
	}
	m.SingleUse = types.BoolValue(t.MaxUses != nil && *t.MaxUses == 1)
	m.ExpiresAt = types.StringValue(t.ExpiresAt.UTC().Format(time.RFC3339))
	if c, err := time.Parse(time.RFC3339, configured.ValueString()); err == nil && c.Equal(t.ExpiresAt.Truncate(time.Second)) {
		m.ExpiresAt = configured
	}
	m.Prefix = types.StringValue(t.Prefix)
	m.Uses = types.Int64Value(int64(t.Uses))
	m.Usable = types.BoolValue(t.Usable)
}

func (r *enrollmentTokenResource) Read(ctx context.Context, req resource.ReadRequest, resp *resource.ReadResponse) {
	var state enrollmentTokenModel
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	if resp.Diagnostics.HasError() {
		return
	}
	tokens, err := r.c.api.EnrollmentTokens(ctx, r.c.org)
	if err != nil {
		resp.Diagnostics.AddError("Could not read the enrollment tokens", err.Error())
		return
	}
	for _, t := range tokens {
		if t.ID == state.ID.ValueString() {
			if t.RevokedAt != nil { // revoked outside Terraform: gone
				break
			}
			state.fill(t, state.ExpiresAt)
			resp.Diagnostics.Append(resp.State.Set(ctx, &state)...)
			return
		}
	}
	resp.State.RemoveResource(ctx)
}

// Update is never called with a change (every argument replaces); it
// stores the plan, as the framework requires.
func (r *enrollmentTokenResource) Update(ctx context.Context, req resource.UpdateRequest, resp *resource.UpdateResponse) {
	var plan enrollmentTokenModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &plan)...)
	resp.Diagnostics.Append(resp.State.Set(ctx, &plan)...)
}

func (r *enrollmentTokenResource) Delete(ctx context.Context, req resource.DeleteRequest, resp *resource.DeleteResponse) {
	var state enrollmentTokenModel
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	if resp.Diagnostics.HasError() {
		return
	}
	if err := r.c.api.RevokeEnrollmentToken(ctx, r.c.org, state.ID.ValueString()); err != nil && !isNotFound(err) {
		resp.Diagnostics.AddError("Could not revoke the enrollment token", err.Error())
	}
}

func (r *enrollmentTokenResource) ImportState(ctx context.Context, req resource.ImportStateRequest, resp *resource.ImportStateResponse) {
	resource.ImportStatePassthroughID(ctx, path.Root("id"), req, resp)
}
