// Package secrets seals the secrets the catalog keeps — each backend's admin
// DSN and its serving role's password — with keys the operator supplies, so
// that a dump or a read-only look at the control database reveals no
// credentials. It lives under catalog/ because package migrations, which
// catalog imports, writes and reads the same columns: Keyring.Open is the
// one function every reader of those columns goes through.
//
// A sealed value is the envelope
//
//	enc:v1:<key id>:<base64(nonce | AES-256-GCM ciphertext)>
//
// with a random 12-byte nonce per value and the key id as additional data.
// A value without the "enc:" prefix is plain text written before encryption
// was configured; Open returns it as it is and the next write (or
// `tenantproxy catalog rotate-secrets`) seals it.
//
// A Keyring holds the current key, which seals, and any previous keys, which
// only open, so keys can be rotated without downtime: configure the new key
// first and the old one after it, rotate, then drop the old one. A nil
// *Keyring seals nothing and opens only plain text.
package secrets
