package web

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/thinlab/thinlab/platform/access"
	"github.com/thinlab/thinlab/platform/api"
	"github.com/thinlab/thinlab/platform/audit"
	"github.com/thinlab/thinlab/platform/billing"
	"github.com/thinlab/thinlab/platform/hub"
	"github.com/thinlab/thinlab/platform/rbac"
	"github.com/thinlab/thinlab/platform/store"
	"github.com/thinlab/thinlab/sdk/agentapi"
	"github.com/thinlab/thinlab/sdk/labels"
	"github.com/thinlab/thinlab/ui"
)

// The clone pages talk to each agent's own DLE API through its tunnel,
// with the typed DLE client (sdk/agentapi) over the hub's transport: the
// agent's end adds its own verification token.

// agentCallTimeout bounds one call to an agent from a page.
const agentCallTimeout = 30 * time.Second

// errAgentUnavailable wraps why an agent cannot be reached.
var errAgentUnavailable = errors.New("agent unavailable")

// agentClient returns the DLE client of ag, or errAgentUnavailable with
// the reason when its tunnel is not held here.
func (w *Web) agentClient(ag *store.Agent) (*agentapi.Client, error) {
	unavailable := fmt.Errorf("%w: %s", errAgentUnavailable, api.AgentUnavailableMessage(ag, ""))
	if ag.RevokedAt != nil || w.Agents == nil {
		return nil, unavailable
	}
	return &agentapi.Client{
		BaseURL:    "http://agent.tunnel",
		HTTPClient: &http.Client{Transport: w.Agents.RoundTripper(ag.ID), Timeout: agentCallTimeout},
	}, nil
}

// agentFailure is the status and message of a failed agent call.
func agentFailure(ag *store.Agent, err error) (int, string) {
	var ae *agentapi.APIError
	switch {
	case errors.Is(err, errAgentUnavailable):
		return http.StatusServiceUnavailable, strings.TrimPrefix(err.Error(), errAgentUnavailable.Error()+": ")
	case errors.Is(err, hub.ErrNotConnected):
		return http.StatusServiceUnavailable, api.AgentUnavailableMessage(ag, "")
	case errors.As(err, &ae):
		msg := ae.Message
		if msg == "" {
			msg = http.StatusText(ae.StatusCode)
		}
		return ae.StatusCode, "Agent " + ag.Name + " refused: " + msg
	}
	return http.StatusBadGateway, fmt.Sprintf("Agent %s did not answer: %v", ag.Name, err)
}

// auditAgentAnswer records the agent's answer to a mutation the way the
// engine proxy does: target AGENT/clone/ID with the agent's status, its
// refusal as the error.
func auditAgentAnswer(c *gin.Context, agentID, cloneID string, okStatus int, err error) {
	auditAnswer(c, agentID, "clone", cloneID, okStatus, err)
}

// auditAnswer is auditAgentAnswer for a clone or a snapshot (kind).
func auditAnswer(c *gin.Context, agentID, kind, id string, okStatus int, err error) {
	target := agentID + "/" + kind
	if id != "" {
		target += "/" + id
	}
	status := okStatus
	if ae, ok := errors.AsType[*agentapi.APIError](err); ok {
		status = ae.StatusCode
		audit.SetError(c, fmt.Sprintf("agent answered %d %s: %s", ae.StatusCode, ae.Code, ae.Message))
	} else if err != nil {
		audit.SetTarget(c, target)
		return // the page's failure message is the event's error
	}
	audit.SetTarget(c, fmt.Sprintf("%s (agent answered %d)", target, status))
}

func clonePath(org, agentID, cloneID string) string {
	return "/o/" + org + "/agents/" + agentID + "/clones/" + url.PathEscape(cloneID)
}

// clones lists every agent's clones and snapshots.
func (w *Web) clones(c *gin.Context) { w.renderClones(c, w.page(c, "Clones"), ui.CloneForm{}) }

func (w *Web) renderClones(c *gin.Context, p ui.Page, form ui.CloneForm) {
	p.Title = "Clones"
	org := access.Org(c)
	filterText := c.Query("label")
	filter := splitLabelList(filterText)
	if _, err := labels.ParseSelector(filter); err != nil {
		w.errorPage(c, http.StatusBadRequest, err.Error()+" (filter as key=value or key, separated by commas)")
		return
	}
	agents, err := w.store.ListAgents(c.Request.Context(), org.ID)
	if err != nil {
		w.internal(c, "list agents", err)
		return
	}
	role := access.Role(c)
	v := ui.Clones{
		CanCreate: rbac.Can(role, rbac.CloneCreate), Form: form,
		CanSnapshot: rbac.Can(role, rbac.SnapshotCreate), CanDeleteSnapshot: rbac.Can(role, rbac.SnapshotDelete),
		LabelFilter: filterText,
	}
	for i := range agents {
		ag := &agents[i]
		if ag.RevokedAt != nil {
			continue
		}
		row := ui.CloneAgent{ID: ag.ID, Name: ag.Name}
		cl, err := w.agentClient(ag)
		if err == nil {
			row.Connected = true
			err = w.listAgent(c.Request.Context(), cl, org.Slug, ag, &row, rbac.Can(role, rbac.SnapshotRead), filter)
		}
		if err != nil {
			_, row.Error = agentFailure(ag, err)
		}
		v.Agents = append(v.Agents, row)
	}
	w.render(c, p.Status, ui.ClonesPage(p, v))
}

func (w *Web) listAgent(ctx context.Context, cl *agentapi.Client, org string, ag *store.Agent, row *ui.CloneAgent, snapshots bool, filter []string) error {
	ctx, cancel := context.WithTimeout(ctx, agentCallTimeout)
	defer cancel()
	clones, err := cl.ClonesLabeled(ctx, filter...)
	if err != nil {
		return err
	}
	for _, k := range clones {
		r := ui.CloneRow{AgentID: ag.ID, ID: k.ID, Status: k.Status.Code, Protected: k.Protected, Created: localTime(k.CreatedAt), Href: clonePath(org, ag.ID, k.ID), Labels: labels.String(k.Labels)}
		if k.Snapshot != nil {
			r.Snapshot = k.Snapshot.ID
		}
		row.Clones = append(row.Clones, r)
	}
	if !snapshots {
		return nil
	}
	snaps, err := cl.SnapshotsLabeled(ctx, filter...)
	if err != nil {
		return err
	}
	for _, s := range snaps {
		row.Snapshots = append(row.Snapshots, ui.SnapshotRow{ID: s.ID, Pool: s.Pool, DataStateAt: localTime(s.DataStateAt), Clones: s.NumClones, Protected: s.Protected, Labels: labels.String(s.Labels)})
	}
	return nil
}

// createClone creates a clone on the agent the form names (loaded inside
// the organization: another organization's agent is not found).
func (w *Web) createClone(c *gin.Context) {
	org := access.Org(c)
	form := ui.CloneForm{
		Agent: c.PostForm("agent"), Snapshot: strings.TrimSpace(c.PostForm("snapshot")), ID: strings.TrimSpace(c.PostForm("id")),
		Username: strings.TrimSpace(c.PostForm("username")), Protected: c.PostForm("protected") != "",
		Labels: strings.TrimSpace(c.PostForm("labels")),
	}
	again := func(c *gin.Context, p ui.Page) { w.renderClones(c, p, form) }
	if form.Agent == "" {
		w.fail(c, http.StatusBadRequest, "agent: choose the agent that makes the clone", again)
		return
	}
	ag, err := w.store.AgentByID(c.Request.Context(), org.ID, form.Agent)
	if errors.Is(err, store.ErrNotFound) {
		w.errorPage(c, http.StatusNotFound, "agent not found")
		return
	}
	if err != nil {
		w.internal(c, "load the agent", err)
		return
	}
	audit.SetTarget(c, ag.ID+"/clone")
	if form.Username == "" || c.PostForm("password") == "" {
		w.fail(c, http.StatusBadRequest, "username and password: both are needed for the clone's database user", again)
		return
	}
	if w.Billing.Enabled() {
		// The plan's limits, as the engine proxy checks them.
		err := api.CheckCloneLimit(c, w.store, w.Agents, w.Billing, org.ID)
		if le, ok := errors.AsType[*billing.LimitError](err); ok {
			w.fail(c, http.StatusPaymentRequired, le.Error(), again)
			return
		}
		if err != nil {
			w.internal(c, "check the plan's limits", err)
			return
		}
	}
	cl, err := w.agentClient(ag)
	if err != nil {
		status, msg := agentFailure(ag, err)
		w.fail(c, status, msg, again)
		return
	}
	set, remove, err := labels.ParseChanges(splitLabelList(form.Labels))
	if err == nil && len(remove) > 0 {
		err = errors.New("write each label as key=value")
	}
	if err != nil {
		w.fail(c, http.StatusBadRequest, "labels: "+err.Error(), again)
		return
	}
	req := agentapi.CreateCloneRequest{
		ID: form.ID, Protected: form.Protected, Labels: set,
		DB: &agentapi.DatabaseRequest{Username: form.Username, Password: c.PostForm("password")},
	}
	if form.Snapshot != "" {
		req.Snapshot = &agentapi.SnapshotCloneField{ID: form.Snapshot}
	}
	ctx, cancel := context.WithTimeout(c.Request.Context(), agentCallTimeout)
	defer cancel()
	created, err := cl.CreateClone(ctx, req)
	id := form.ID
	if created != nil {
		id = created.ID
	}
	auditAgentAnswer(c, ag.ID, id, http.StatusCreated, err)
	if err != nil {
		status, msg := agentFailure(ag, err)
		w.fail(c, status, msg, again)
		return
	}
	api.RecordCloneOwner(c, w.store, w.logger, ag, created.ID)
	w.redirectWithFlash(c, clonePath(org.Slug, ag.ID, created.ID), "Clone "+created.ID+" is being created on "+ag.Name+".")
}

// inProgress are the statuses a clone's page reloads itself in.
func inProgress(code string) bool {
	return code == "CREATING" || code == "RESETTING" || code == "DELETING" || code == "EXPORTING"
}

// clonePage shows one clone of the route's agent.
func (w *Web) clonePage(c *gin.Context) { w.renderClone(c, w.page(c, "Clone")) }

func (w *Web) renderClone(c *gin.Context, p ui.Page) {
	org, ag, id := access.Org(c), access.Agent(c), c.Param("clone")
	cl, err := w.agentClient(ag)
	var k *agentapi.Clone
	if err == nil {
		ctx, cancel := context.WithTimeout(c.Request.Context(), agentCallTimeout)
		k, err = cl.Clone(ctx, id)
		cancel()
	}
	if err != nil {
		status, msg := agentFailure(ag, err)
		if status == http.StatusNotFound {
			msg = "clone not found"
		}
		w.errorPage(c, status, msg)
		return
	}
	role := access.Role(c)
	p.Title = "Clone " + k.ID
	v := ui.CloneDetail{
		AgentID: ag.ID, AgentName: ag.Name, ID: k.ID, Status: k.Status.Code, Message: k.Status.Message,
		Protected: k.Protected, Created: localTime(k.CreatedAt), InProgress: inProgress(k.Status.Code),
		CanUpdate: rbac.Can(role, rbac.CloneUpdate), CanDelete: rbac.Can(role, rbac.CloneDelete),
		Base: clonePath(org.Slug, ag.ID, k.ID), Checked: time.Now(),
		ConnectCommand: "thinlab connect " + k.ID + " --agent " + ag.Name,
	}
	if k.Snapshot != nil {
		v.Snapshot = k.Snapshot.ID
	}
	if v.InProgress {
		p.RefreshSeconds = 2
	}
	v.Charts = w.cloneCharts(c, org.ID, ag.ID, k.ID)
	if k.Status.Code == "OK" {
		v.Host, v.Port, v.User, v.DBName = k.DB.Host, k.DB.Port, k.DB.Username, k.DB.DBName
		v.ConnStr = k.DB.ConnStr
		if placeholderHost(v.Host) {
			v.ConnStr = fmt.Sprintf("host=AGENT_HOST port=%s user=%s dbname=%s", v.Port, v.User, v.DBName)
			v.HostNote = fmt.Sprintf("AGENT_HOST is the address of agent %s's host: the agent reports its clones on %q, which only the host itself reaches. Use the host's address if your network reaches it, or thinlab connect below, which needs no route to the host.", ag.Name, v.Host)
		}
	}
	if v.CanUpdate {
		ctx, cancel := context.WithTimeout(c.Request.Context(), agentCallTimeout)
		snaps, err := cl.Snapshots(ctx)
		cancel()
		if err == nil {
			for _, s := range snaps {
				v.Snapshots = append(v.Snapshots, ui.SnapshotRow{ID: s.ID, Pool: s.Pool})
			}
		}
	}
	w.render(c, p.Status, ui.ClonePage(p, v))
}

// placeholderHost reports whether host means nothing away from the agent's
// host (empty, loopback or unspecified).
func placeholderHost(host string) bool {
	if host == "" || host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && (ip.IsLoopback() || ip.IsUnspecified())
}

// cloneAction runs one mutation of the route's clone on its agent and
// returns to the clone's page (or to the list, after destroy).
func (w *Web) cloneAction(c *gin.Context, okStatus int, done string, call func(ctx context.Context, cl *agentapi.Client, id string) error) {
	org, ag, id := access.Org(c), access.Agent(c), c.Param("clone")
	audit.SetTarget(c, ag.ID+"/clone/"+id)
	cl, err := w.agentClient(ag)
	if err == nil {
		ctx, cancel := context.WithTimeout(c.Request.Context(), agentCallTimeout)
		err = call(ctx, cl, id)
		cancel()
		auditAgentAnswer(c, ag.ID, id, okStatus, err)
	}
	if err != nil {
		status, msg := agentFailure(ag, err)
		if status == http.StatusServiceUnavailable || status == http.StatusNotFound {
			w.errorPage(c, status, msg)
			return
		}
		// The clone's page again, with the agent's refusal and its status
		// (which makes the audit event an error).
		w.fail(c, status, msg, w.renderClone)
		return
	}
	to := clonePath(org.Slug, ag.ID, id)
	if done == "destroyed" {
		to = "/o/" + org.Slug + "/clones"
	}
	w.redirectWithFlash(c, to, "Clone "+id+" "+done+".")
}

func (w *Web) resetClone(c *gin.Context) {
	snap := strings.TrimSpace(c.PostForm("snapshot"))
	w.cloneAction(c, http.StatusOK, "is being reset", func(ctx context.Context, cl *agentapi.Client, id string) error {
		return cl.ResetClone(ctx, id, agentapi.ResetCloneRequest{SnapshotID: snap, Latest: snap == ""})
	})
}

func (w *Web) protectClone(c *gin.Context) {
	protect := c.PostForm("protected") == "true"
	done := "unprotected"
	if protect {
		done = "protected"
	}
	w.cloneAction(c, http.StatusOK, done, func(ctx context.Context, cl *agentapi.Client, id string) error {
		_, err := cl.UpdateClone(ctx, id, agentapi.PatchCloneRequest{Protected: protect})
		return err
	})
}

func (w *Web) destroyClone(c *gin.Context) {
	w.cloneAction(c, http.StatusOK, "destroyed", func(ctx context.Context, cl *agentapi.Client, id string) error {
		return cl.DestroyClone(ctx, id)
	})
}

// localTime shows an agent's time in UTC ("" when it sent none).
func localTime(t *agentapi.LocalTime) string {
	if t == nil || t.IsZero() {
		return ""
	}
	return t.UTC().Format("2006-01-02 15:04:05 UTC")
}

// createSnapshot takes a snapshot of the route's agent's first pool.
func (w *Web) createSnapshot(c *gin.Context) {
	w.snapshotAction(c, "", func(ctx context.Context, cl *agentapi.Client) (string, error) {
		s, err := cl.CreateSnapshot(ctx, strings.TrimSpace(c.PostForm("pool")))
		if err != nil {
			return "", err
		}
		return s.ID, nil
	}, "created")
}

// deleteSnapshot deletes the form's snapshot on the route's agent (the
// agent refuses one that clones depend on).
func (w *Web) deleteSnapshot(c *gin.Context) {
	id := strings.TrimSpace(c.PostForm("id"))
	if id == "" {
		w.fail(c, http.StatusBadRequest, "id: name the snapshot to delete", func(c *gin.Context, p ui.Page) { w.renderClones(c, p, ui.CloneForm{}) })
		return
	}
	w.snapshotAction(c, id, func(ctx context.Context, cl *agentapi.Client) (string, error) {
		return id, cl.DeleteSnapshot(ctx, id, false)
	}, "deleted")
}

func (w *Web) snapshotAction(c *gin.Context, id string, call func(ctx context.Context, cl *agentapi.Client) (string, error), done string) {
	org, ag := access.Org(c), access.Agent(c)
	again := func(c *gin.Context, p ui.Page) { w.renderClones(c, p, ui.CloneForm{}) }
	audit.SetTarget(c, ag.ID+"/snapshot/"+id)
	cl, err := w.agentClient(ag)
	if err == nil {
		// Snapshots of a large pool take longer than a page's call.
		ctx, cancel := context.WithTimeout(c.Request.Context(), 10*time.Minute)
		var got string
		got, err = call(ctx, cl)
		cancel()
		if got != "" {
			id = got
		}
		auditAnswer(c, ag.ID, "snapshot", id, http.StatusOK, err)
	}
	if err != nil {
		status, msg := agentFailure(ag, err)
		if status == http.StatusServiceUnavailable {
			w.errorPage(c, status, msg)
			return
		}
		w.fail(c, status, msg, again)
		return
	}
	w.redirectWithFlash(c, "/o/"+org.Slug+"/clones", "Snapshot "+id+" "+done+" on "+ag.Name+".")
}

// splitLabelList reads labels or filter terms typed into one field,
// separated by commas ("team=data, ci").
func splitLabelList(s string) []string {
	var out []string
	for part := range strings.SplitSeq(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			out = append(out, part)
		}
	}
	return out
}
