package migrations

// LegacyChat is legacyChat, for tests that build a target as an earlier
// release left it.
var LegacyChat = legacyChat
