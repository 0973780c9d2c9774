package main

import "testing"

func TestDNSServerAddr(t *testing.T) {
	tests := []struct{ in, want, wantErr string }{
		{in: "10.96.0.10:53", want: "10.96.0.10:53"},
		{in: "10.96.0.10", want: "10.96.0.10:53"},
		{in: "kube-dns.kube-system.svc:5353", want: "kube-dns.kube-system.svc:5353"},
		{in: "[fd00::10]:53", want: "[fd00::10]:53"},
		{in: "fd00::10", want: "[fd00::10]:53"},
		{in: "[fd00::10]", want: "[fd00::10]:53"},
		{in: "127.0.0.1:0", wantErr: `port "0" is not 1-65535`},
		{in: "127.0.0.1:dns", wantErr: `port "dns" is not 1-65535`},
		{in: ":53", wantErr: "not host:port"},
		{in: "udp://10.0.0.1:53", wantErr: "not host:port"},
	}
	for _, tt := range tests {
		got, err := dnsServerAddr(tt.in)
		switch {
		case tt.wantErr != "" && (err == nil || err.Error() != tt.wantErr):
			t.Errorf("%q: %q, %v; want error %q", tt.in, got, err, tt.wantErr)
		case tt.wantErr == "" && (err != nil || got != tt.want):
			t.Errorf("%q: %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}
