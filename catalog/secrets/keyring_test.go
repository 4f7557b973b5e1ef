package secrets_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/tenantproxy/tenantproxy/catalog/secrets"
)

func keyring(t *testing.T, text string) *secrets.Keyring {
	t.Helper()
	k, err := (*secrets.Keyring)(nil).Parse("test", text)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestSealOpenRoundTripHidesThePlainText(t *testing.T) {
	k := keyring(t, "a="+secrets.Generate())
	const dsn = "postgres://admin:hunter2-secret@db:5432/postgres"
	sealed := k.Seal(dsn)
	if !strings.HasPrefix(sealed, "enc:v1:a:") || strings.Contains(sealed, "hunter2") {
		t.Fatalf("sealed value %q: want an enc:v1:a: envelope without the secret", sealed)
	}
	if again := k.Seal(dsn); again == sealed {
		t.Fatal("two seals of one value are equal: the nonce is not random")
	}
	got, err := k.Open(sealed)
	if err != nil || got != dsn {
		t.Fatalf("Open = %q, %v; want the DSN back", got, err)
	}
}

func TestOpenReturnsPlainTextWrittenBeforeEncryption(t *testing.T) {
	for _, k := range []*secrets.Keyring{nil, keyring(t, secrets.Generate())} {
		if got, err := k.Open("host=db password=old"); err != nil || got != "host=db password=old" {
			t.Fatalf("Open(plain) = %q, %v; want it unchanged", got, err)
		}
	}
	var off *secrets.Keyring
	if got := off.Seal("pw"); got != "pw" {
		t.Fatalf("nil keyring Seal = %q, want plain text (encryption off)", got)
	}
}

func TestOpenWithPreviousKeyAfterRotation(t *testing.T) {
	a, b := "a="+secrets.Generate(), "b="+secrets.Generate()
	sealedA := keyring(t, a).Seal("pw")
	both := keyring(t, b+"\n"+a) // b current, a previous
	if both.Current() != "b" {
		t.Fatalf("current key = %q, want the first one, b", both.Current())
	}
	plain, err := both.Open(sealedA)
	if err != nil || plain != "pw" {
		t.Fatalf("Open with previous key = %q, %v", plain, err)
	}
	resealed := both.Seal(plain)
	if got, err := keyring(t, b).Open(resealed); err != nil || got != "pw" {
		t.Fatalf("after rotation, b alone opens = %q, %v", got, err)
	}
	if _, err := keyring(t, b).Open(sealedA); !errors.Is(err, secrets.ErrNoKey) || !strings.Contains(err.Error(), `"a"`) {
		t.Fatalf("b alone opening a value of a: %v; want ErrNoKey naming key a", err)
	}
}

func TestOpenWithWrongOrMissingKeyIsAClearError(t *testing.T) {
	sealed := keyring(t, "k="+secrets.Generate()).Seal("secret-pw")
	_, err := keyring(t, "k="+secrets.Generate()).Open(sealed)
	if !errors.Is(err, secrets.ErrWrongKey) || strings.Contains(err.Error(), "secret-pw") {
		t.Fatalf("wrong key: %v; want ErrWrongKey", err)
	}
	var none *secrets.Keyring
	if _, err := none.Open(sealed); !errors.Is(err, secrets.ErrNoKey) || !strings.Contains(err.Error(), "--secrets-key-file") {
		t.Fatalf("no key: %v; want ErrNoKey pointing at --secrets-key-file", err)
	}
	if _, err := keyring(t, "k="+secrets.Generate()).Open("enc:v1:k:!!!"); !errors.Is(err, secrets.ErrWrongKey) {
		t.Fatalf("damaged value: %v; want ErrWrongKey", err)
	}
}

func TestParseKeyLines(t *testing.T) {
	bare := secrets.Generate()
	k := keyring(t, "# comment\n\n"+bare+"\nold="+secrets.Generate()+"\n")
	if len(k.Current()) != 16 {
		t.Fatalf("bare key id = %q, want its 16-hex-digit fingerprint", k.Current())
	}
	for _, bad := range []string{"", "# only a comment", "x=notbase64", "short=" + "AAAA", "a=" + bare + "\na=" + bare} {
		if _, err := (*secrets.Keyring)(nil).Parse("test", bad); err == nil {
			t.Errorf("Parse(%q) accepted", bad)
		} else if strings.Contains(err.Error(), bare) {
			t.Errorf("Parse error echoes the key: %v", err)
		}
	}
}
