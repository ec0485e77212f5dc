/* The create floor's C init: listens on the agent's port and answers one
   line to every connection. Built static by floor_test.go; with -DTHREADS=n
   it first starts n idle threads, as the Go runtime does; with -DSIGACTIONS
   it first reads and sets the handler of every signal but SIGKILL and
   SIGSTOP, as the Go runtime's start does (114 rt_sigaction calls). */
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

static void *idle(void *arg) {
	for (;;)
		pause();
	return arg;
}

static void handler(int sig) { (void)sig; }

int main(void) {
#ifdef SIGACTIONS
	for (int i = 1; i < 65; i++) {
		struct sigaction old, sa = {.sa_handler = handler, .sa_flags = SA_RESTART | SA_ONSTACK};
		if (i == SIGKILL || i == SIGSTOP || (i > 31 && i < 34))
			continue;
		sigaction(i, 0, &old);
		sigaction(i, &sa, 0);
	}
#endif
#ifdef THREADS
	for (int i = 0; i < THREADS; i++) {
		pthread_t t;
		pthread_create(&t, 0, idle, 0);
	}
#endif
	int s = socket(AF_INET, SOCK_STREAM, 0);
	int one = 1;
	setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(49983)};
	if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 16))
		return 1;
	for (;;) {
		int c = accept(s, 0, 0);
		if (c < 0)
			continue;
		write(c, "ok\n", 3);
		close(c);
	}
}
