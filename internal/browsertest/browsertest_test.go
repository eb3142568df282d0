package browsertest

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"
)

func TestBrowserSubmitsAForm(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		if r.Method == http.MethodPost {
			_ = r.ParseForm()
			fmt.Fprintf(w, `<p id="out">hello %s</p>`, r.PostForm.Get("name"))
			return
		}
		fmt.Fprint(w, `<form method="post"><input id="name" name="name"></form>`)
	}))
	defer srv.Close()

	ctx := New(t)
	Step(t, ctx, "open", chromedp.Navigate(srv.URL), chromedp.WaitVisible("#name"))
	Step(t, ctx, "submit", chromedp.SendKeys("#name", "browser"), chromedp.Submit("#name"))
	got := Get(t, ctx, "read", chromedp.Text("#out"))
	if !strings.Contains(got, "hello browser") {
		t.Fatalf("page says %q", got)
	}
}
