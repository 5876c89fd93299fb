#define LUPE_LOG_PREFIX "trust: "
#include "cli_trust.h"
#include "log.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define TREE_DEPTH 8

/* st belongs to path; a reason goes into why when it is not trustworthy. */
static int check_stat(const char *path, const struct stat *st, int sticky_ok, char *why,
		      size_t len)
{
	if (st->st_uid != 0) {
		snprintf(why, len, "'%s' is owned by uid %u, not root", path, (unsigned)st->st_uid);
		return -EPERM;
	}
	if (sticky_ok && S_ISDIR(st->st_mode) && (st->st_mode & S_ISVTX))
		return 0;
	if (st->st_mode & (S_IWGRP | S_IWOTH)) {
		snprintf(why, len, "'%s' is writable by %s (mode %03o)", path,
			 st->st_mode & S_IWOTH ? "other users" : "its group",
			 (unsigned)(st->st_mode & 0777));
		return -EPERM;
	}
	return 0;
}

int lupe_cli_check_trusted(const char *path, char *why, size_t len)
{
	char real[PATH_MAX], *slash;
	struct stat st;
	int err;

	if (!realpath(path, real)) {
		err = -errno;
		snprintf(why, len, "'%s': %s", path, lupe_errstr(err));
		return err;
	}
	if (stat(real, &st) != 0) {
		err = -errno;
		snprintf(why, len, "'%s': %s", real, lupe_errstr(err));
		return err;
	}
	err = check_stat(real, &st, 0, why, len);
	if (err)
		return err;
	slash = strrchr(real, '/');
	if (!slash)
		return 0;
	if (slash == real)
		slash[1] = '\0';	/* the file is in / */
	else
		*slash = '\0';
	if (stat(real, &st) != 0) {
		err = -errno;
		snprintf(why, len, "'%s': %s", real, lupe_errstr(err));
		return err;
	}
	return check_stat(real, &st, 1, why, len);
}

static int check_tree(const char *dir, int depth, char *why, size_t len)
{
	char path[PATH_MAX];
	struct dirent *de;
	struct stat st;
	DIR *d;
	int err = 0;

	if (depth > TREE_DEPTH)
		return 0;
	d = opendir(dir);
	if (!d) {
		err = -errno;
		snprintf(why, len, "'%s': %s", dir, lupe_errstr(err));
		return err;
	}
	while ((de = readdir(d))) {
		size_t n = strlen(de->d_name);

		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, de->d_name) >= sizeof(path))
			continue;
		if (stat(path, &st) != 0)
			continue;	/* a dangling link loads nothing */
		if (S_ISDIR(st.st_mode)) {
			err = check_stat(path, &st, 0, why, len);
			if (!err)
				err = check_tree(path, depth + 1, why, len);
		} else if (n > 4 && strcmp(de->d_name + n - 4, ".lua") == 0) {
			err = check_stat(path, &st, 0, why, len);
		}
		if (err)
			break;
	}
	closedir(d);
	return err;
}

int lupe_cli_check_trusted_tree(const char *dir, char *why, size_t len)
{
	struct stat st;
	int err;

	if (stat(dir, &st) != 0) {
		if (errno == ENOENT)
			return 0;
		err = -errno;
		snprintf(why, len, "'%s': %s", dir, lupe_errstr(err));
		return err;
	}
	err = check_stat(dir, &st, 0, why, len);
	if (err || !S_ISDIR(st.st_mode))
		return err;
	return check_tree(dir, 1, why, len);
}
