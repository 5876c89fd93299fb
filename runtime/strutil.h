/* Small text helpers shared by the parsers (maps, kallsyms, file IDs). */
#ifndef LUPE_STRUTIL_H
#define LUPE_STRUTIL_H

/* The value of one hex digit, or -1. */
static inline int lupe_hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

#endif
