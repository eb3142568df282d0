package api

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/gin-gonic/gin"

	"github.com/thinlab/thinlab/platform/access"
	"github.com/thinlab/thinlab/platform/audit"
	"github.com/thinlab/thinlab/platform/notify"
	"github.com/thinlab/thinlab/platform/store"
	"github.com/thinlab/thinlab/sdk/platformapi"
)

// URLGuard checks a Slack or webhook URL as deliveries will (scheme, no
// credentials, no refused literal address).
type URLGuard interface{ ValidateURL(raw string) error }

// notificationRoutes are the routes of /api/v1/orgs/:org/notifications.
func (a *API) notificationRoutes() []access.Route {
	const p = Prefix + "/orgs/:org/notifications"
	get, post, put, del := http.MethodGet, http.MethodPost, http.MethodPut, http.MethodDelete
	read, manage := notificationRead, notificationManage
	return []access.Route{
		{Method: get, Path: p + "/inbox", Permission: read, Handler: a.inbox},
		{Method: post, Path: p + "/inbox/read-all", Permission: read, Action: "notification.read_all", Handler: a.inboxReadAll},
		{Method: post, Path: p + "/inbox/:notification/read", Permission: read, Action: "notification.read", Handler: a.inboxRead},
		{Method: get, Path: p + "/preferences", Permission: read, Handler: a.notificationPreferences},
		{Method: put, Path: p + "/preferences", Permission: read, Action: "notification.preferences.update", Handler: a.setMyPreferences},
		{Method: put, Path: p + "/org-preferences", Permission: manage, Action: "notification.org_preferences.update", Handler: a.setOrgPreferences},
		{Method: get, Path: p + "/channels", Permission: manage, Handler: a.listChannels},
		{Method: post, Path: p + "/channels", Permission: manage, Action: "notification.channel.create", Handler: a.createChannel},
		{Method: del, Path: p + "/channels/:channel", Permission: manage, Action: "notification.channel.delete", Handler: a.deleteChannel},
		{Method: get, Path: p + "/dead-letters", Permission: manage, Handler: a.listDeadLetters},
		{Method: post, Path: p + "/dead-letters/:message/retry", Permission: manage, Action: "notification.dead_letter.retry", Handler: a.retryDeadLetter},
	}
}

// NotificationJSON is an inbox entry as the API shows it.
func NotificationJSON(e store.InboxEntry) platformapi.Notification {
	k, _ := notify.Lookup(e.Event.Name)
	return platformapi.Notification{
		ID: e.Item.ID, Event: e.Event.Name, Severity: e.Event.Severity, Description: k.Description,
		AgentID: e.Event.AgentID, AgentName: e.AgentName, Target: e.Event.Target, Message: e.Event.Message,
		Count: e.Event.Count, FirstAt: e.Event.FirstAt.UTC(), LastAt: e.Event.LastAt.UTC(), ReadAt: e.Item.ReadAt,
	}
}

func (a *API) inbox(c *gin.Context) {
	ctx, org, user := c.Request.Context(), access.OrgID(c), access.Caller(c).UserID
	items, err := a.Store.ListInbox(ctx, org, user, c.Query("unread") == "true", 200)
	if err != nil {
		a.internal(c, "list notifications", err)
		return
	}
	unread, err := a.Store.UnreadCount(ctx, org, user)
	if err != nil {
		a.internal(c, "count notifications", err)
		return
	}
	out := platformapi.Inbox{Items: make([]platformapi.Notification, 0, len(items)), Unread: unread}
	for _, e := range items {
		out.Items = append(out.Items, NotificationJSON(e))
	}
	c.JSON(http.StatusOK, out)
}

// int64Param parses a numeric path parameter; another value is "not found".
func int64Param(c *gin.Context, name string) (int64, bool) {
	audit.SetTarget(c, c.Param(name))
	id, err := strconv.ParseInt(c.Param(name), 10, 64)
	return id, err == nil && id > 0
}

func (a *API) inboxRead(c *gin.Context) {
	id, ok := int64Param(c, "notification")
	if !ok {
		notFound(c, "notification")
		return
	}
	err := a.Store.MarkInboxRead(c.Request.Context(), access.OrgID(c), access.Caller(c).UserID, id)
	if errors.Is(err, store.ErrNotFound) {
		notFound(c, "notification")
		return
	}
	if err != nil {
		a.internal(c, "mark the notification read", err)
		return
	}
	c.Status(http.StatusNoContent)
}

func (a *API) inboxReadAll(c *gin.Context) {
	n, err := a.Store.MarkInboxAllRead(c.Request.Context(), access.OrgID(c), access.Caller(c).UserID)
	if err != nil {
		a.internal(c, "mark notifications read", err)
		return
	}
	audit.SetTarget(c, fmt.Sprintf("%d notifications", n))
	c.Status(http.StatusNoContent)
}

// Catalogue is the event catalogue as the API shows it.
func Catalogue() []platformapi.NotificationKind {
	out := make([]platformapi.NotificationKind, 0, len(notify.Catalogue))
	for _, k := range notify.Catalogue {
		out = append(out, platformapi.NotificationKind{Name: k.Name, Severity: k.Severity, Description: k.Description, DefaultEmail: k.Email})
	}
	return out
}

func (a *API) notificationPreferences(c *gin.Context) {
	user := access.Caller(c).UserID
	ps, err := a.Store.ListNotificationPreferences(c.Request.Context(), access.OrgID(c), user)
	if err != nil {
		a.internal(c, "list preferences", err)
		return
	}
	out := platformapi.NotificationPreferences{Organization: []platformapi.NotificationPreference{}, Mine: []platformapi.NotificationPreference{}, Catalogue: Catalogue()}
	for _, p := range ps {
		v := p.Enabled
		pref := platformapi.NotificationPreference{Event: p.Event, Channel: p.Channel, Enabled: &v}
		if p.UserID == "" {
			out.Organization = append(out.Organization, pref)
		} else {
			out.Mine = append(out.Mine, pref)
		}
	}
	c.JSON(http.StatusOK, out)
}

// PreferenceChanges validates requested preferences: known events (or
// "*") and channels; the organization's defaults may name Slack and
// webhooks, a member's own only email, inbox and digest.
func PreferenceChanges(in []platformapi.NotificationPreference, org bool) ([]store.PreferenceChange, error) {
	if len(in) > 500 {
		return nil, errors.New("preferences: send at most 500 at once")
	}
	out := make([]store.PreferenceChange, 0, len(in))
	for i, p := range in {
		if _, ok := notify.Lookup(p.Event); !ok && p.Event != "*" {
			return nil, fmt.Errorf("preferences[%d].event %q: use an event of the catalogue or * for all", i, p.Event)
		}
		channels := []string{store.ChannelEmail, store.ChannelInbox, store.ChannelDigest}
		if org {
			channels = append(channels, store.ChannelSlack, store.ChannelWebhook)
		}
		if !slices.Contains(channels, p.Channel) {
			return nil, fmt.Errorf("preferences[%d].channel %q: use one of %s", i, p.Channel, strings.Join(channels, ", "))
		}
		out = append(out, store.PreferenceChange{Event: p.Event, Channel: p.Channel, Enabled: p.Enabled})
	}
	return out, nil
}

func (a *API) setMyPreferences(c *gin.Context)  { a.setPreferences(c, access.Caller(c).UserID) }
func (a *API) setOrgPreferences(c *gin.Context) { a.setPreferences(c, "") }

func (a *API) setPreferences(c *gin.Context, userID string) {
	var req platformapi.SetNotificationPreferencesRequest
	if !decode(c, &req) {
		return
	}
	changes, err := PreferenceChanges(req.Preferences, userID == "")
	if err != nil {
		invalid(c, err.Error(), "preferences")
		return
	}
	audit.SetTarget(c, fmt.Sprintf("%d preferences", len(changes)))
	if err := a.Store.SetNotificationPreferences(c.Request.Context(), access.OrgID(c), userID, changes); err != nil {
		a.internal(c, "save preferences", err)
		return
	}
	a.notificationPreferences(c)
}

func channelJSON(ch store.NotificationChannel) platformapi.NotificationChannel {
	return platformapi.NotificationChannel{ID: ch.ID, Kind: ch.Kind, Name: ch.Name, URL: RedactChannelURL(ch), CreatedAt: ch.CreatedAt.UTC()}
}

// RedactChannelURL shows a Slack URL without its secret path (a Slack
// incoming webhook's path is its credential).
func RedactChannelURL(ch store.NotificationChannel) string {
	if ch.Kind != store.ChannelSlack {
		return ch.URL
	}
	if i := strings.Index(ch.URL, "://"); i >= 0 {
		if j := strings.Index(ch.URL[i+3:], "/"); j >= 0 {
			return ch.URL[:i+3+j] + "/…"
		}
	}
	return ch.URL
}

func (a *API) listChannels(c *gin.Context) {
	chs, err := a.Store.ListNotificationChannels(c.Request.Context(), access.OrgID(c))
	if err != nil {
		a.internal(c, "list channels", err)
		return
	}
	out := make([]platformapi.NotificationChannel, 0, len(chs))
	for _, ch := range chs {
		out = append(out, channelJSON(ch))
	}
	c.JSON(http.StatusOK, platformapi.List[platformapi.NotificationChannel]{Items: out})
}

// ValidateChannel checks a new channel and names the field at fault.
func ValidateChannel(g URLGuard, kind, name, url string) (field string, err error) {
	switch {
	case kind != store.ChannelSlack && kind != store.ChannelWebhook:
		return "kind", fmt.Errorf("kind %q: use slack or webhook", kind)
	case strings.TrimSpace(name) == "" || len(name) > 100:
		return "name", errors.New("name: give the channel a name of 1-100 characters")
	}
	if g == nil {
		return "url", errors.New("url: channels are not available on this server")
	}
	if err := g.ValidateURL(url); err != nil {
		return "url", err
	}
	return "", nil
}

// NewWebhookSecret is a channel's signing secret.
func NewWebhookSecret() string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic("crypto/rand failed: " + err.Error())
	}
	return "whsec_" + hex.EncodeToString(b)
}

func (a *API) createChannel(c *gin.Context) {
	var req platformapi.CreateNotificationChannelRequest
	if !decode(c, &req) {
		return
	}
	req.Name = strings.TrimSpace(req.Name)
	audit.SetTarget(c, req.Kind+" "+req.Name)
	if field, err := ValidateChannel(a.URLGuard, req.Kind, req.Name, req.URL); err != nil {
		invalid(c, err.Error(), field)
		return
	}
	secret := ""
	if req.Kind == store.ChannelWebhook {
		secret = NewWebhookSecret()
	}
	ch, err := a.Store.CreateNotificationChannel(c.Request.Context(), access.OrgID(c), req.Kind, req.Name, req.URL, secret, access.Caller(c).UserID)
	if errors.Is(err, store.ErrConflict) {
		access.Error(c, http.StatusConflict, platformapi.CodeConflict, "the organization has a channel named "+req.Name+": choose another name", "name")
		return
	}
	if err != nil {
		a.internal(c, "create the channel", err)
		return
	}
	audit.SetTarget(c, ch.ID+" "+ch.Kind+" "+ch.Name)
	out := channelJSON(*ch)
	out.Secret = secret
	c.JSON(http.StatusCreated, out)
}

func (a *API) deleteChannel(c *gin.Context) {
	id := c.Param("channel")
	audit.SetTarget(c, id)
	err := a.Store.DeleteNotificationChannel(c.Request.Context(), access.OrgID(c), id)
	if errors.Is(err, store.ErrNotFound) {
		notFound(c, "channel")
		return
	}
	if err != nil {
		a.internal(c, "delete the channel", err)
		return
	}
	c.Status(http.StatusNoContent)
}

// DeadLetterJSON is a dead letter as the API shows it.
func DeadLetterJSON(d store.DeadLetter) platformapi.DeadLetter {
	return platformapi.DeadLetter{
		ID: d.Message.ID, Channel: d.Message.Channel, Recipient: d.Recipient, Event: d.Event.Name, Target: d.Event.Target,
		Attempts: d.Message.Attempts, LastError: d.Message.LastError, CreatedAt: d.Message.CreatedAt.UTC(),
	}
}

func (a *API) listDeadLetters(c *gin.Context) {
	ds, err := a.Store.ListDeadLetters(c.Request.Context(), access.OrgID(c), 200)
	if err != nil {
		a.internal(c, "list dead letters", err)
		return
	}
	out := make([]platformapi.DeadLetter, 0, len(ds))
	for _, d := range ds {
		out = append(out, DeadLetterJSON(d))
	}
	c.JSON(http.StatusOK, platformapi.List[platformapi.DeadLetter]{Items: out})
}

func (a *API) retryDeadLetter(c *gin.Context) {
	id, ok := int64Param(c, "message")
	if !ok {
		notFound(c, "dead letter")
		return
	}
	err := a.Store.RetryDeadLetter(c.Request.Context(), access.OrgID(c), id)
	if errors.Is(err, store.ErrNotFound) {
		notFound(c, "dead letter")
		return
	}
	if err != nil {
		a.internal(c, "retry the message", err)
		return
	}
	a.Notifier.Committed()
	c.Status(http.StatusNoContent)
}
