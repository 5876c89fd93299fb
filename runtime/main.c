/* The lupe command line: built-in commands, and every scripts/NAME.lua as `lupe NAME`. */
#include "log.h"
#include "lua_engine.h"
#include "lupe.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char usage_text[] =
	"usage: lupe [-v|-vv] COMMAND [ARGS...]\n"
	"\n"
	"lupe is a whole-system sampling profiler whose policy is written in Lua.\n"
	"\n"
	"Built-in commands:\n"
	"  run SCRIPT.lua [ARGS...]  run a Lua script; require \"lupe\" gives the profiler API\n"
	"  version                   print the version\n"
	"  help [COMMAND]            this text, or a command's own help\n"
	"\n"
	"Options:\n"
	"  -v, -vv                   more log output (info, debug), on stderr\n"
	"\n"
	"Environment:\n"
	"  LUPE_PATH                 directory holding lua/ (the stdlib) and scripts/;\n"
	"                            default: next to the executable, or PREFIX/" LUPE_SHARE_REL "\n";

static const char run_usage[] =
	"usage: lupe run SCRIPT.lua [ARGS...]\n"
	"\n"
	"Runs SCRIPT.lua in LuaJIT with the lupe stdlib. `arg` holds the arguments\n"
	"(arg[0] is the script) and so does `...`. require \"lupe\" and require \"lpeg\" work.\n"
	"A script error prints the message with a traceback and exits 1.\n";

static int is_dir(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* <exe>/share/lupe in the build tree, <exe>/../share/lupe once installed. */
static int find_share_dir(char *out, size_t len)
{
	char exe[PATH_MAX], probe[PATH_MAX + 64];
	const char *env = getenv("LUPE_PATH");
	ssize_t n;
	char *slash;

	if (env && *env) {
		snprintf(out, len, "%s", env);
		return 0;
	}
	n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (n < 0)
		return -errno;
	exe[n] = '\0';
	slash = strrchr(exe, '/');
	if (slash)
		*slash = '\0';
	snprintf(probe, sizeof(probe), "%s/share/lupe/lua", exe);
	if (is_dir(probe)) {
		snprintf(out, len, "%s/share/lupe", exe);
		return 0;
	}
	snprintf(out, len, "%s/../%s", exe, LUPE_SHARE_REL);
	return 0;
}

static const char *script_description(const char *path, char *buf, size_t len)
{
	FILE *f = fopen(path, "r");
	const char *d = "";

	if (!f)
		return d;
	if (fgets(buf, len, f) && strncmp(buf, "-- ", 3) == 0) {
		buf[strcspn(buf, "\n")] = '\0';
		d = buf + 3;
	}
	fclose(f);
	return d;
}

static void list_script_commands(const char *share_dir)
{
	char dir[PATH_MAX], path[PATH_MAX * 2], desc[256];
	struct dirent **ents;
	int i, n;

	snprintf(dir, sizeof(dir), "%s/scripts", share_dir);
	n = scandir(dir, &ents, NULL, alphasort);
	if (n < 0)
		return;
	printf("\nScript commands (%s):\n", dir);
	for (i = 0; i < n; i++) {
		size_t l = strlen(ents[i]->d_name);

		if (l > 4 && strcmp(ents[i]->d_name + l - 4, ".lua") == 0) {
			snprintf(path, sizeof(path), "%s/%s", dir, ents[i]->d_name);
			printf("  %-24.*s  %s\n", (int)(l - 4), ents[i]->d_name,
			       script_description(path, desc, sizeof(desc)));
		}
		free(ents[i]);
	}
	free(ents);
	printf("Run `lupe COMMAND --help` for a command's options.\n");
}

static int run_script(const char *share_dir, const char *path, int argc, char **argv)
{
	lua_State *L = lupe_engine_new(share_dir);
	int err, status;

	if (!L) {
		pr_err("cannot create the Lua state: %s", lupe_errstr(errno));
		return 1;
	}
	err = lupe_engine_run_file(L, path, argc, argv, &status);
	lupe_engine_free(L);
	return err ? 1 : status;
}

int main(int argc, char **argv)
{
	char share_dir[PATH_MAX], script[PATH_MAX * 2];
	const char *cmd;
	int i = 1;

	lupe_log_attach_libbpf();
	for (; i < argc && argv[i][0] == '-'; i++) {
		if (strcmp(argv[i], "-v") == 0) {
			lupe_log_set_level(LUPE_LOG_INFO);
		} else if (strcmp(argv[i], "-vv") == 0) {
			lupe_log_set_level(LUPE_LOG_DEBUG);
		} else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
			break;
		} else if (strcmp(argv[i], "--version") == 0) {
			printf("lupe %s\n", LUPE_VERSION);
			return 0;
		} else {
			pr_err("unknown option '%s' (see lupe --help)", argv[i]);
			return 2;
		}
	}
	if (find_share_dir(share_dir, sizeof(share_dir)) < 0) {
		pr_err("cannot locate the executable: %s", lupe_errstr(errno));
		return 1;
	}

	cmd = i < argc ? argv[i] : NULL;
	if (!cmd || strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0 ||
	    (strcmp(cmd, "help") == 0 && i + 1 >= argc)) {
		fputs(usage_text, stdout);
		list_script_commands(share_dir);
		return cmd ? 0 : 2;
	}
	if (strcmp(cmd, "help") == 0) {
		/* `lupe help X` is `lupe X --help`. */
		argv[i] = argv[i + 1];
		argv[i + 1] = "--help";
		cmd = argv[i];
	}
	if (strcmp(cmd, "version") == 0) {
		printf("lupe %s\n", LUPE_VERSION);
		return 0;
	}
	if (strcmp(cmd, "run") == 0) {
		if (i + 1 >= argc) {
			pr_err("run: missing SCRIPT (see lupe run --help)");
			return 2;
		}
		if (strcmp(argv[i + 1], "--help") == 0 || strcmp(argv[i + 1], "-h") == 0) {
			fputs(run_usage, stdout);
			return 0;
		}
		return run_script(share_dir, argv[i + 1], argc - i - 2, argv + i + 2);
	}

	if (strchr(cmd, '/') == NULL) {
		snprintf(script, sizeof(script), "%s/scripts/%s.lua", share_dir, cmd);
		if (access(script, R_OK) == 0)
			return run_script(share_dir, script, argc - i - 1, argv + i + 1);
	}
	pr_err("unknown command '%s' (see lupe --help)", cmd);
	return 2;
}
