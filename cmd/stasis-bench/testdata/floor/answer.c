/* The create floor's C init: listens on the agent's port and answers one
   line to every connection. Built static by floor_test.go; with -DTHREADS=n
   it first starts n idle threads, as the Go runtime does. */
#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

static void *idle(void *arg) {
	for (;;)
		pause();
	return arg;
}

int main(void) {
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
