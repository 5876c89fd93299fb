#include "log.h"
#include "lupe_test.h"

#include <errno.h>

struct captured {
	int n;
	enum lupe_log_level level;
	char msg[256];
};

static void capture(enum lupe_log_level level, const char *msg, void *ctx)
{
	struct captured *c = ctx;

	c->n++;
	c->level = level;
	snprintf(c->msg, sizeof(c->msg), "%s", msg);
}

TEST(log_filters_by_level_and_strips_newlines)
{
	struct captured c = { 0 };

	lupe_set_print(capture, &c);
	lupe_log_set_level(LUPE_LOG_WARN);
	lupe_log(LUPE_LOG_INFO, "hidden %d", 1);
	ASSERT_EQ(c.n, 0);
	lupe_log(LUPE_LOG_WARN, "shown %d\n\n", 2);
	ASSERT_EQ(c.n, 1);
	ASSERT_EQ(c.level, LUPE_LOG_WARN);
	ASSERT_STREQ(c.msg, "shown 2");
	lupe_log_set_level(LUPE_LOG_DEBUG);
	pr_debug("now %s", "visible");
	ASSERT_EQ(c.n, 2);
	lupe_set_print(NULL, NULL);
}

TEST(errstr_takes_either_sign)
{
	ASSERT_STREQ(lupe_errstr(-ENOENT), lupe_errstr(ENOENT));
	ASSERT_STREQ(lupe_errstr(ENOENT), "No such file or directory");
}
