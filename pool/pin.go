package pool

// ForgetStatements clears the record of the statements prepared on c
// (AddStatement): a client's SQL DEALLOCATE on c may have dropped them.
// Like the record itself, it is the holder's to keep true.
func (c *Conn) ForgetStatements() { clear(c.statements) }
