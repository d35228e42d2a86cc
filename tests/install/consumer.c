/* Built against an installed libcommvq, as a user would: with pkg-config
 * (-std=c99 -pedantic -Werror) and with find_package(commvq). */
#include <commvq/commvq.h>

#include <stdio.h>
#include <string.h>

int main(void) {
    commvq_codebook_t* cb = NULL;
    commvq_status_t s;
    if (commvq_version_number() != COMMVQ_VERSION_NUMBER) {
        fprintf(stderr, "header %d, library %u\n", COMMVQ_VERSION_NUMBER, commvq_version_number());
        return 1;
    }
    s = commvq_codebook_load("/nonexistent/codebook.safetensors", &cb);
    if (s != COMMVQ_ERR_IO || cb != NULL || strlen(commvq_last_error()) == 0) {
        fprintf(stderr, "unexpected: %s\n", commvq_status_string(s));
        return 1;
    }
    printf("libcommvq %s: %s (%s)\n", commvq_version_string(), commvq_status_string(s),
           commvq_last_error());
    return 0;
}
