/* Least privilege for scripts run as root: lupe refuses Lua code that someone other than
 * root could have written, since running it would hand them root. */
#ifndef LUPE_CLI_TRUST_H
#define LUPE_CLI_TRUST_H

#include <stddef.h>

/* 0 if root may load path: it (after symlinks) is owned by root and not writable by group
 * or other, and so is its directory unless that directory is sticky (/tmp): otherwise
 * anyone could swap the file. -EPERM with the reason in why (a borrowed buffer of len
 * bytes), or another negative errno when path cannot be examined. */
int lupe_cli_check_trusted(const char *path, char *why, size_t len);

/* The same for dir and every directory and *.lua file below it (depth <= 8). A dir that
 * does not exist is trusted: nothing would be loaded from it. */
int lupe_cli_check_trusted_tree(const char *dir, char *why, size_t len);

#endif
