package main

import (
	"context"
	"net/http"
	"net/url"
	"testing"
)

func TestLocalLocation(t *testing.T) {
	for _, tc := range []struct {
		name, upstream, outURL, loc, want string
	}{
		{"relative path", "https://docs.example", "https://docs.example/docs/a", "/docs/b?x=1", "http://127.0.0.1:8479/docs/b?x=1"},
		{"relative to the current path", "https://docs.example", "https://docs.example/docs/a", "b", "http://127.0.0.1:8479/docs/b"},
		{"absolute on the upstream", "https://docs.example", "https://docs.example/docs/a", "https://DOCS.example/login#top", "http://127.0.0.1:8479/login#top"},
		{"under the upstream's prefix", "https://rp.example/api", "https://rp.example/api/docs/a", "/api/docs/b", "http://127.0.0.1:8479/docs/b"},
		{"the prefix itself", "https://rp.example/api/", "https://rp.example/api/docs/a", "/api", "http://127.0.0.1:8479/"},
		{"outside the prefix", "https://rp.example/api", "https://rp.example/api/docs/a", "/other", ""},
		{"another host", "https://docs.example", "https://docs.example/docs/a", "https://sso.example/login", ""},
		{"another scheme", "https://docs.example", "https://docs.example/docs/a", "http://docs.example/x", ""},
		{"no Location", "https://docs.example", "https://docs.example/docs/a", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up, _ := url.Parse(tc.upstream)
			out, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, tc.outURL, nil)
			out = withInbound(out, "127.0.0.1:8479")
			if got := localLocation(tc.loc, out, up); got != tc.want {
				t.Errorf("localLocation(%q) = %q, want %q", tc.loc, got, tc.want)
			}
		})
	}
}
