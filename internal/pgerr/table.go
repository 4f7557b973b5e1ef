package pgerr

import "strconv"

// row is what a client sees for one Code.
type row struct {
	name     string // the constant's name, for logs
	sqlstate string
	fatal    bool
}

// codes is the one mapping from Codes to what clients see; the README's
// error table is its specification. Indexed by Code: a Code without a row
// reads as the zero row, which TestEveryCodeHasARow refuses.
var codes = [codeCount]row{
	CodeInternal:                   {"CodeInternal", "XX000", true},
	CodeNoTenant:                   {"CodeNoTenant", "28000", true},
	CodeNoUser:                     {"CodeNoUser", "28000", true},
	CodeConflictingTenant:          {"CodeConflictingTenant", "28000", true},
	CodeInvalidTenant:              {"CodeInvalidTenant", "3D000", true},
	CodeUnknownTenant:              {"CodeUnknownTenant", "3D000", true},
	CodeTenantSuspended:            {"CodeTenantSuspended", "28000", true},
	CodeTenantUnavailable:          {"CodeTenantUnavailable", "57P03", true},
	CodeAuthFailed:                 {"CodeAuthFailed", "28P01", true},
	CodeTLSRequired:                {"CodeTLSRequired", "28000", true},
	CodeStatementRefused:           {"CodeStatementRefused", "42501", false},
	CodeTooManyConnections:         {"CodeTooManyConnections", "53300", true},
	CodeRateLimited:                {"CodeRateLimited", "53400", false},
	CodeShuttingDown:               {"CodeShuttingDown", "57P01", true},
	CodeProtocolViolation:          {"CodeProtocolViolation", "08P01", true},
	CodeFeatureNotSupported:        {"CodeFeatureNotSupported", "0A000", true},
	CodeBackendUnavailable:         {"CodeBackendUnavailable", "08006", true},
	CodeMessageTooLarge:            {"CodeMessageTooLarge", "54000", true},
	CodeSyntaxError:                {"CodeSyntaxError", "42601", false},
	CodeStatementTooComplex:        {"CodeStatementTooComplex", "54001", false},
	CodeOutOfMemory:                {"CodeOutOfMemory", "53200", true},
	CodeIdleInTransaction:          {"CodeIdleInTransaction", "25P03", true},
	CodeDuplicatePreparedStatement: {"CodeDuplicatePreparedStatement", "42P05", false},
	CodeUnrecognizedSetting:        {"CodeUnrecognizedSetting", "42704", false},
	CodeInvalidParameterValue:      {"CodeInvalidParameterValue", "22023", false},
	CodeTooManyPinned:              {"CodeTooManyPinned", "53400", false},
	CodeReadOnly:                   {"CodeReadOnly", "25006", false},
	CodeQueryCanceled:              {"CodeQueryCanceled", "57014", false},
}

// rowOf returns c's row; a value outside the enum gets CodeInternal's,
// so that nothing unknown reaches a client as anything but XX000.
func rowOf(c Code) row {
	if c < 0 || c >= codeCount {
		return codes[CodeInternal]
	}
	return codes[c]
}

// String returns the constant's name, e.g. "CodeAuthFailed", or
// "Code(n)" for a value outside the enum.
func (c Code) String() string {
	if c < 0 || c >= codeCount {
		return "Code(" + strconv.Itoa(int(c)) + ")"
	}
	return codes[c].name
}

// SQLState is the SQLSTATE a client sees for c: XX000 for CodeInternal
// and for any value outside the enum.
func (c Code) SQLState() string { return rowOf(c).sqlstate }

// Fatal reports whether c ends the connection (severity FATAL) wherever
// it happens; the others are ERRORs after which the session goes on,
// unless they happen before the first ReadyForQuery, where every error is
// FATAL as in PostgreSQL.
func (c Code) Fatal() bool { return rowOf(c).fatal }
