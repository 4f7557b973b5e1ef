package proxy

import (
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

func TestRenameContextNamesTheClientsTable(t *testing.T) {
	for _, tc := range []struct {
		where, want string
		renamed     bool
	}{
		{`COPY tenantproxy_copy, line 2, column id: "x"`, `COPY User List, line 2, column id: "x"`, true},
		{"SQL function \"f\"\nCOPY tenantproxy_copy, line 1", "SQL function \"f\"\nCOPY User List, line 1", true},
		{"COPY users, line 2", "", false},
		{"", "", false},
	} {
		m, err := (&pgproto3.ErrorResponse{Severity: "ERROR", Code: "22P02", Message: "invalid input syntax", Where: tc.where, Routine: "pg_strtoint64"}).Encode(nil)
		if err != nil {
			t.Fatal(err)
		}
		out, renamed := renameContext(m, []byte("COPY User List,"))
		if renamed != tc.renamed {
			t.Fatalf("renameContext(%q) renamed = %v; want %v", tc.where, renamed, tc.renamed)
		}
		if !renamed {
			continue
		}
		var got pgproto3.ErrorResponse
		if err := got.Decode(out[5:]); err != nil {
			t.Fatalf("renameContext(%q) gave an undecodable message: %v", tc.where, err)
		}
		if got.Where != tc.want || got.Code != "22P02" || got.Message != "invalid input syntax" || got.Routine != "pg_strtoint64" || int(out[1])<<24|int(out[2])<<16|int(out[3])<<8|int(out[4]) != len(out)-1 {
			t.Errorf("renameContext(%q) = %+v (length word of %d bytes); want Where %q, the other fields kept", tc.where, got, len(out), tc.want)
		}
	}
}
