package web

import (
	"errors"
	"net/http"
	"strconv"
	"strings"

	"github.com/gin-gonic/gin"

	"github.com/thinlab/thinlab/platform/access"
	"github.com/thinlab/thinlab/platform/api"
	"github.com/thinlab/thinlab/platform/audit"
	"github.com/thinlab/thinlab/platform/notify"
	"github.com/thinlab/thinlab/platform/rbac"
	"github.com/thinlab/thinlab/platform/store"
	"github.com/thinlab/thinlab/sdk/platformapi"
	"github.com/thinlab/thinlab/ui"
)

// notificationRoutes are the notification pages: the inbox and
// preferences for everyone, channels and dead letters for admins.
func (w *Web) notificationRoutes() []access.Route {
	const p = "/o/:org/notifications"
	get, post := http.MethodGet, http.MethodPost
	read, manage := rbac.NotificationRead, rbac.NotificationManage
	return []access.Route{
		{Method: get, Path: p, Permission: read, Handler: w.inbox},
		{Method: post, Path: p + "/inbox/read-all", Permission: read, Action: "notification.read_all", Handler: w.inboxReadAll},
		{Method: post, Path: p + "/inbox/:notification/read", Permission: read, Action: "notification.read", Handler: w.inboxRead},
		{Method: get, Path: p + "/preferences", Permission: read, Handler: w.preferences},
		{Method: post, Path: p + "/preferences", Permission: read, Action: "notification.preferences.update", Handler: w.saveMyPreferences},
		{Method: post, Path: p + "/org-preferences", Permission: manage, Action: "notification.org_preferences.update", Handler: w.saveOrgPreferences},
		{Method: get, Path: p + "/channels", Permission: manage, Handler: w.channels},
		{Method: post, Path: p + "/channels", Permission: manage, Action: "notification.channel.create", Handler: w.createChannel},
		{Method: post, Path: p + "/channels/:channel/delete", Permission: manage, Action: "notification.channel.delete", Handler: w.deleteChannel},
		{Method: post, Path: p + "/dead-letters/:message/retry", Permission: manage, Action: "notification.dead_letter.retry", Handler: w.retryDeadLetter},
	}
}

func (w *Web) inbox(c *gin.Context) {
	p := w.page(c, "Notifications")
	ctx, org, user := c.Request.Context(), access.OrgID(c), access.Caller(c).UserID
	items, err := w.store.ListInbox(ctx, org, user, false, 200)
	if err != nil {
		w.internal(c, "list notifications", err)
		return
	}
	v := ui.Inbox{CanManage: rbac.Can(access.Role(c), rbac.NotificationManage)}
	for _, e := range items {
		n := api.NotificationJSON(e)
		v.Items = append(v.Items, ui.NotificationItem{
			ID: n.ID, Event: n.Event, Severity: n.Severity, Description: n.Description, Agent: n.AgentName,
			Target: n.Target, Message: n.Message, Count: n.Count, LastAt: n.LastAt, Unread: n.ReadAt == nil,
		})
		if n.ReadAt == nil {
			v.Unread++
		}
	}
	w.render(c, p.Status, ui.InboxPage(p, v))
}

func (w *Web) inboxRead(c *gin.Context) {
	audit.SetTarget(c, c.Param("notification"))
	id, err := strconv.ParseInt(c.Param("notification"), 10, 64)
	if err == nil {
		err = w.store.MarkInboxRead(c.Request.Context(), access.OrgID(c), access.Caller(c).UserID, id)
	} else {
		err = store.ErrNotFound
	}
	if errors.Is(err, store.ErrNotFound) {
		w.errorPage(c, http.StatusNotFound, "notification not found")
		return
	}
	if err != nil {
		w.internal(c, "mark the notification read", err)
		return
	}
	c.Redirect(http.StatusSeeOther, "/o/"+access.Org(c).Slug+"/notifications")
}

func (w *Web) inboxReadAll(c *gin.Context) {
	n, err := w.store.MarkInboxAllRead(c.Request.Context(), access.OrgID(c), access.Caller(c).UserID)
	if err != nil {
		w.internal(c, "mark notifications read", err)
		return
	}
	audit.SetTarget(c, strconv.FormatInt(n, 10)+" notifications")
	c.Redirect(http.StatusSeeOther, "/o/"+access.Org(c).Slug+"/notifications")
}

var memberChannels = []string{store.ChannelInbox, store.ChannelEmail, store.ChannelDigest}
var orgChannels = []string{store.ChannelInbox, store.ChannelEmail, store.ChannelDigest, store.ChannelSlack, store.ChannelWebhook}

func (w *Web) preferences(c *gin.Context) {
	ctx, org, user := c.Request.Context(), access.OrgID(c), access.Caller(c).UserID
	p := w.page(c, "Notification preferences")
	ps, err := w.store.ListNotificationPreferences(ctx, org, user)
	if err != nil {
		w.internal(c, "list preferences", err)
		return
	}
	base := "/o/" + access.Org(c).Slug + "/notifications"
	v := ui.Preferences{EmailOff: !w.Notifier.EmailOn(), Mine: preferenceTable(ps, user, base+"/preferences", memberChannels)}
	if rbac.Can(access.Role(c), rbac.NotificationManage) {
		t := preferenceTable(ps, "", base+"/org-preferences", orgChannels)
		v.Org = &t
	}
	w.render(c, p.Status, ui.PreferencesPage(p, v))
}

// preferenceTable shows user's settings ("" the organization's): the
// row for every event first, then each event of the catalogue.
func preferenceTable(ps []store.NotificationPreference, user, action string, channels []string) ui.PreferenceTable {
	set := map[[2]string]bool{}
	for _, x := range ps {
		if x.UserID == user {
			set[[2]string{x.Event, x.Channel}] = x.Enabled
		}
	}
	// What "inherit" means: the same resolution without this level.
	var inherited []store.NotificationPreference
	for _, x := range ps {
		if x.UserID != user {
			inherited = append(inherited, x)
		}
	}
	t := ui.PreferenceTable{Action: action, Channels: channels}
	rows := append([]notify.Kind{{Name: "*", Description: "All events"}}, notify.Catalogue...)
	for _, k := range rows {
		r := ui.PreferenceRow{Event: k.Name, Description: k.Description, Severity: k.Severity}
		for _, ch := range channels {
			cell := ui.PreferenceCell{Channel: ch, Effective: notify.Effective(inherited, "", k.Name, ch)}
			if v, ok := set[[2]string{k.Name, ch}]; ok {
				cell.Value = map[bool]string{true: "on", false: "off"}[v]
			}
			r.Cells = append(r.Cells, cell)
		}
		t.Rows = append(t.Rows, r)
	}
	return t
}

func (w *Web) saveMyPreferences(c *gin.Context) {
	w.savePreferences(c, access.Caller(c).UserID, memberChannels)
}

func (w *Web) saveOrgPreferences(c *gin.Context) { w.savePreferences(c, "", orgChannels) }

// savePreferences reads the form's pref.<event>.<channel> fields (on,
// off, or empty to inherit); fields the form does not send stay as they are.
func (w *Web) savePreferences(c *gin.Context, user string, channels []string) {
	var in []platformapi.NotificationPreference
	events := append([]string{"*"}, func() []string {
		var out []string
		for _, k := range notify.Catalogue {
			out = append(out, k.Name)
		}
		return out
	}()...)
	for _, ev := range events {
		for _, ch := range channels {
			v, ok := c.GetPostForm("pref." + ev + "." + ch)
			if !ok {
				continue
			}
			var enabled *bool
			switch strings.TrimSpace(v) {
			case "on":
				b := true
				enabled = &b
			case "off":
				b := false
				enabled = &b
			case "":
			default:
				w.fail(c, http.StatusBadRequest, "pref."+ev+"."+ch+": choose on, off or inherit", w.preferencesAgain)
				return
			}
			in = append(in, platformapi.NotificationPreference{Event: ev, Channel: ch, Enabled: enabled})
		}
	}
	changes, err := api.PreferenceChanges(in, user == "")
	if err != nil {
		w.fail(c, http.StatusBadRequest, err.Error(), w.preferencesAgain)
		return
	}
	audit.SetTarget(c, strconv.Itoa(len(changes))+" preferences")
	if err := w.store.SetNotificationPreferences(c.Request.Context(), access.OrgID(c), user, changes); err != nil {
		w.internal(c, "save preferences", err)
		return
	}
	w.redirectWithFlash(c, "/o/"+access.Org(c).Slug+"/notifications/preferences", "Preferences saved.")
}

func (w *Web) preferencesAgain(c *gin.Context, _ ui.Page) { w.preferences(c) }

func (w *Web) channels(c *gin.Context) {
	w.renderChannels(c, w.page(c, "Notification channels"), ui.Channels{})
}

func (w *Web) renderChannels(c *gin.Context, p ui.Page, v ui.Channels) {
	p.Title = "Notification channels"
	ctx, org := c.Request.Context(), access.OrgID(c)
	chs, err := w.store.ListNotificationChannels(ctx, org)
	if err != nil {
		w.internal(c, "list channels", err)
		return
	}
	for _, ch := range chs {
		v.Channels = append(v.Channels, ui.Channel{ID: ch.ID, Kind: ch.Kind, Name: ch.Name, URL: api.RedactChannelURL(ch), Created: ch.CreatedAt})
	}
	ds, err := w.store.ListDeadLetters(ctx, org, 200)
	if err != nil {
		w.internal(c, "list dead letters", err)
		return
	}
	for _, d := range ds {
		j := api.DeadLetterJSON(d)
		v.DeadLetters = append(v.DeadLetters, ui.DeadLetter{ID: j.ID, Channel: j.Channel, Recipient: j.Recipient, Event: j.Event, Target: j.Target, Attempts: j.Attempts, LastError: j.LastError, Created: j.CreatedAt})
	}
	counts, err := w.store.OutboxCounts(ctx, org)
	if err != nil {
		w.internal(c, "count messages", err)
		return
	}
	v.Pending = counts[store.OutboxPending]
	w.render(c, p.Status, ui.ChannelsPage(p, v))
}

func (w *Web) channelsAgain(c *gin.Context, p ui.Page) { w.renderChannels(c, p, ui.Channels{}) }

func (w *Web) createChannel(c *gin.Context) {
	kind, name, url := c.PostForm("kind"), strings.TrimSpace(c.PostForm("name")), strings.TrimSpace(c.PostForm("url"))
	audit.SetTarget(c, kind+" "+name)
	if _, err := api.ValidateChannel(w.URLGuard, kind, name, url); err != nil {
		w.fail(c, http.StatusBadRequest, err.Error(), w.channelsAgain)
		return
	}
	secret := ""
	if kind == store.ChannelWebhook {
		secret = api.NewWebhookSecret()
	}
	ch, err := w.store.CreateNotificationChannel(c.Request.Context(), access.OrgID(c), kind, name, url, secret, access.Caller(c).UserID)
	if errors.Is(err, store.ErrConflict) {
		w.fail(c, http.StatusConflict, "the organization has a channel named "+name+": choose another name", w.channelsAgain)
		return
	}
	if err != nil {
		w.internal(c, "create the channel", err)
		return
	}
	audit.SetTarget(c, ch.ID+" "+ch.Kind+" "+ch.Name)
	p := w.page(c, "Notification channels")
	p.Flash = append(p.Flash, ui.Flash{Kind: "success", Text: "Channel " + name + " added."})
	w.renderChannels(c, p, ui.Channels{NewSecret: secret, NewName: name})
}

func (w *Web) deleteChannel(c *gin.Context) {
	id := c.Param("channel")
	audit.SetTarget(c, id)
	err := w.store.DeleteNotificationChannel(c.Request.Context(), access.OrgID(c), id)
	if errors.Is(err, store.ErrNotFound) {
		w.fail(c, http.StatusNotFound, "channel not found", w.channelsAgain)
		return
	}
	if err != nil {
		w.internal(c, "delete the channel", err)
		return
	}
	w.redirectWithFlash(c, "/o/"+access.Org(c).Slug+"/notifications/channels", "Channel removed.")
}

func (w *Web) retryDeadLetter(c *gin.Context) {
	audit.SetTarget(c, c.Param("message"))
	id, err := strconv.ParseInt(c.Param("message"), 10, 64)
	if err == nil {
		err = w.store.RetryDeadLetter(c.Request.Context(), access.OrgID(c), id)
	} else {
		err = store.ErrNotFound
	}
	if errors.Is(err, store.ErrNotFound) {
		w.fail(c, http.StatusNotFound, "dead letter not found", w.channelsAgain)
		return
	}
	if err != nil {
		w.internal(c, "retry the message", err)
		return
	}
	w.Notifier.Committed()
	w.redirectWithFlash(c, "/o/"+access.Org(c).Slug+"/notifications/channels", "Message queued again.")
}
